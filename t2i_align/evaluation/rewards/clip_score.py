"""CLIP score with ``openai/clip-vit-large-patch14``: 100 * cos(image, text) per pair.

Clamping: the reward clamps each sample at 0 (``max(100 * cos, 0)``, like the per-sample
definition of Hessel et al.; real image/caption pairs are essentially never negative).
torchmetrics' ``CLIPScore`` / ``clip_score`` instead does NOT clamp per sample: it averages
the raw ``100 * cos`` values and returns ``max(mean, 0)``. To reproduce torchmetrics exactly
use ``load_clip_score(..., clamp=False)`` and aggregate with :func:`clip_score_mean`.
(torchmetrics 1.9 itself fails with transformers 5.x, so the metric is computed here.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from .clip_common import load_clip, pair_cosines
from t2i_align.errors import InputError

CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"


class ClipScoreReward:
    """Callable reward: ``reward(images, prompts) -> float32 [N]`` on CPU (100 * cos, clamped at 0)."""

    name = "clip_score"

    def __init__(self, model, processor, batch_size: int = 16, clamp: bool = True):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.clamp = clamp

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        scores = 100.0 * pair_cosines(self.model, self.processor, images, prompts, self.batch_size)
        return scores.clamp_min(0.0) if self.clamp else scores


def clip_score_mean(scores: torch.Tensor) -> torch.Tensor:
    """torchmetrics' aggregate: ``max(mean(scores), 0)`` as a 0-dim float32 tensor.

    Equal to torchmetrics' CLIPScore when ``scores`` are the unclamped per-sample values
    (``clamp=False``); with per-sample clamped scores it is simply their mean.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.numel() == 0:
        raise InputError("clip_score_mean of an empty tensor")
    return scores.mean().clamp_min(0.0)


def load_clip_score(
    model_path: str = CLIP_SCORE_MODEL,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
    clamp: bool = True,
    processor_path: str | None = None,
) -> ClipScoreReward:
    """Load the CLIP-score model (processor from ``processor_path``, default ``model_path``)."""
    model, processor = load_clip(model_path, processor_path, device=device, dtype=dtype)
    return ClipScoreReward(model, processor, batch_size=batch_size, clamp=clamp)
