"""model.guidance: the value fed to the guidance embedding of guidance-distilled transformers
(FLUX.1-dev, families/flux.py) while training. Families without such an embedding refuse it, so a
setting that would do nothing is never silently ignored. Nothing outside t2i_align/families/
imports this module.
"""

from __future__ import annotations

import math

from t2i_align.errors import InputError


def refuse_guidance(guidance) -> None:
    """A clear error when model.guidance is set for a family whose denoiser has no guidance embedding."""
    if guidance is not None:
        raise InputError(f"model.guidance={guidance!r} applies to guidance-distilled transformers (family flux, "
                         "FLUX.1-dev); this family's denoiser has no guidance embedding: remove model.guidance")


def check_guidance(guidance) -> float | None:
    """model.guidance as a float (None stays None): a finite number >= 0, else a clear error."""
    if guidance is None:
        return None
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(guidance, bool) or not math.isfinite(value) or value < 0:
        raise InputError(f"model.guidance must be a finite number >= 0 (or null), got {guidance!r}")
    return value
