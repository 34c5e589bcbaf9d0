"""Choose how the UNet computes attention: "sdpa" (default), "eager" or "xformers".

- sdpa: diffusers' ``AttnProcessor2_0``, i.e. ``torch.nn.functional.scaled_dot_product_attention``;
  on GPU, torch picks flash / memory-efficient kernels by itself, so this is the fast default.
- eager: diffusers' ``AttnProcessor``, plain matmul + softmax; slow, but easy to step through
  when debugging numerics.
- xformers: ``unet.enable_xformers_memory_efficient_attention()``; an optional extra whose
  kernels are CUDA-only, so it is checked up front and refused with a clear message when it
  cannot run.
"""

from __future__ import annotations

import importlib.util

import torch
from t2i_align.errors import InputError

ATTENTION_BACKENDS = ("sdpa", "eager", "xformers")


def _xformers_problem() -> str | None:
    """Why xformers cannot be used here, or None if it can."""
    if importlib.util.find_spec("xformers") is None:
        return "the xformers package is not installed (install the extra: `pip install t2i_align[xformers]`)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (xformers kernels run on CUDA only)"
    return None


def set_attention_backend(unet, backend: str) -> None:
    """Set the attention implementation of every attention layer of ``unet`` in place.

    backend: "sdpa" | "eager" | "xformers". Raises ValueError for an unknown backend, or
    for "xformers" when it is not installed or no CUDA GPU is present.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if not isinstance(unet, UNet2DConditionModel) and backend in ("sdpa", "eager"):
        # transformers (SD3, FLUX) ship their own joint-attention processors, already on SDPA;
        # the UNet processors set below would break them
        if backend == "eager":
            raise InputError(f"attention backend 'eager' is for UNets; {type(unet).__name__} keeps its SDPA "
                             "joint-attention processors (use model.attention=sdpa)")
        return
    if backend == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif backend == "eager":
        unet.set_attn_processor(AttnProcessor())
    elif backend == "xformers":
        problem = _xformers_problem()
        if problem is not None:
            raise InputError(f"attention backend 'xformers' cannot be used: {problem}; use model.attention=sdpa")
        unet.enable_xformers_memory_efficient_attention()
    else:
        raise InputError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
