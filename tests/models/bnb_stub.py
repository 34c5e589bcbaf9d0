"""Pretend bitsandbytes and a CUDA GPU are there, for the quantize_base wiring tests on CPU.

bitsandbytes has no CPU kernels, so nothing is quantised in these tests: the checks of
models/quantization.py see an installed bitsandbytes and a GPU, and diffusers' BitsAndBytesConfig
(whose 4-bit check reads the installed version) can be built. The denoiser's from_pretrained is
replaced by tests that need it (they drop the quantization_config and load the plain model).
"""

import importlib.metadata

FAKE_VERSION = "0.48.0"


def fake_bitsandbytes(monkeypatch, installed: bool = True, cuda: bool = True) -> None:
    from t2i_align.models import quantization

    real_version = importlib.metadata.version

    def version(name):
        if name == "bitsandbytes" and installed:
            return FAKE_VERSION
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(quantization, "bitsandbytes_version", lambda: FAKE_VERSION if installed else None)
    monkeypatch.setattr(quantization, "cuda_available", lambda: cuda)


def record_from_pretrained(monkeypatch, cls) -> list[dict]:
    """Replace cls.from_pretrained by one that records its keyword arguments and loads the plain
    (unquantised) model without the quantization_config; returns the list of recorded kwargs."""
    seen = []
    real = cls.from_pretrained.__func__

    def from_pretrained(klass, *args, **kwargs):
        seen.append(dict(kwargs))
        kwargs.pop("quantization_config", None)
        return real(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(from_pretrained))
    return seen
