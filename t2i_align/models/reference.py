"""The frozen reference model of Diffusion-DPO / DCPO / InPO, as a strategy.

- "copy": a frozen deep copy of the UNet taken at the start of training (full fine-tuning).
  Optionally cast to a lower dtype (e.g. bf16) to halve its memory.
- "adapters_off": with LoRA, the reference IS the base model, and the trainable UNet already
  holds the base weights (frozen) plus small adapters. Disabling the adapters for the
  reference forward gives exactly the base model's output, so no second copy of the UNet is
  kept: for SDXL that saves a full 2.6B-parameter copy (about 5 GB in bf16, 10 GB in fp32).
- "cpu_offload": a frozen copy kept in CPU RAM; accelerate's offload hooks stream each
  module's weights to the training device for the forward (what the papers' scripts do to fit
  SDXL on one GPU): no device memory for a second UNet, paid for with host-device copies.
- "none": no reference (SFT, MaPO).

A reference is a callable ``ref(sample, timestep, encoder_hidden_states,
added_cond_kwargs=None) -> Tensor`` returning the model prediction under ``torch.no_grad()``
as float32, shape of ``sample``. ``ref.unet`` is the module it runs (to move / offload it).
"""

from __future__ import annotations

import copy

import torch
from t2i_align.errors import InputError

REFERENCE_STRATEGIES = ("none", "copy", "cpu_offload", "adapters_off")


def has_adapters(unet) -> bool:
    """True when peft adapter layers are injected into ``unet``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


# Call arguments a low-precision copy still gets in float32: the flow families' float timesteps
# (SD3's sigma x 1000 has a resolution of 4 in bf16 between 512 and 1024, so the reference would see
# another timestep than the policy under autocast), FLUX's guidance and position ids. The models
# cast their own time / guidance embeddings to their weights' dtype.
FLOAT32_ARGUMENTS = ("timestep", "guidance", "img_ids", "txt_ids")


def _cast_call(kwargs: dict, dtype) -> dict:
    """The keyword arguments of a denoiser call cast as _cast does, FLOAT32_ARGUMENTS excepted."""
    return {k: v if k in FLOAT32_ARGUMENTS else _cast(v, dtype) for k, v in kwargs.items()}


def _cast(value, dtype):
    """`value` (a tensor, or tuples / lists / dicts of them) with floating tensors cast to `dtype`
    (None: unchanged); integer tensors (DDPM timesteps) stay as they are."""
    if dtype is None:
        return value
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class CopyReference:
    """A frozen deep copy of the UNet (eval mode, no grad), optionally in another dtype, on
    `device` (default: where the UNet is); with `offload_to_cpu` it stays in CPU RAM and runs on
    `device` through accelerate.cpu_offload hooks."""

    def __init__(self, unet, dtype=None, device=None, offload_to_cpu: bool = False):
        self.unet = copy.deepcopy(unet)
        self.unet.requires_grad_(False)
        self.unet.eval()
        if dtype is not None:
            self.unet.to(dtype=dtype)
        self.dtype = dtype
        if offload_to_cpu:
            from accelerate import cpu_offload

            self.unet.to("cpu")
            cpu_offload(self.unet, execution_device=torch.device(device) if device is not None else torch.device("cpu"))
        elif device is not None:
            self.unet.to(device)

    @torch.no_grad()
    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """The frozen copy's prediction for the denoiser's own call (a family's predict), with
        floating tensors cast to the copy's dtype; returned in float32."""
        out = self.unet(*_cast(args, self.dtype), return_dict=False, **_cast_call(kwargs, self.dtype))[0]
        return out.float()


class AdaptersOffReference:
    """The trainable UNet itself with its peft adapters disabled for the call (base model output).

    ``runner`` is the module the forward goes through: the plain UNet, or (``run_through``) the
    engine's wrapper of it. FSDP keeps the root unit's parameters (embedders, final layers)
    sharded outside the wrapped forward, so there the reference must run through the wrapper;
    the adapters are switched on the plain module either way (the wrapper holds the same layers).
    """

    def __init__(self, unet):
        self.unet = unet
        self.runner = unet

    def run_through(self, wrapper) -> None:
        """Call ``wrapper`` (e.g. the FSDP-prepared UNet) instead of the plain module."""
        self.runner = wrapper

    @torch.no_grad()
    def __call__(self, *args, **kwargs) -> torch.Tensor:
        self.unet.disable_adapters()
        try:
            out = self.runner(*args, return_dict=False, **kwargs)[0]
        finally:
            self.unet.enable_adapters()
        return out.float()


def make_reference(unet, strategy: str, dtype=None, device=None):
    """Build the reference for ``strategy``: "copy", "cpu_offload", "adapters_off" or "none"
    (returns None). ``device``: where the reference runs (default: where ``unet`` is).

    Pass the plain (unwrapped) UNet. "copy" must be made before LoRA is added (raises
    ValueError if the UNet has adapters: use "adapters_off" then, which needs no copy).
    "adapters_off" raises ValueError if the UNet has no adapters. ``dtype`` applies to
    the copies only (the adapters_off reference shares the trainable UNet's weights).
    """
    if strategy == "none":
        return None
    if strategy in ("copy", "cpu_offload"):
        if has_adapters(unet):
            raise InputError(
                f"reference strategy {strategy!r} got a UNet with LoRA adapters; use 'adapters_off' "
                "(the base model is the same UNet with adapters disabled, no copy needed)"
            )
        return CopyReference(unet, dtype=dtype, device=device, offload_to_cpu=strategy == "cpu_offload")
    if strategy == "adapters_off":
        if not has_adapters(unet):
            raise InputError(
                "reference strategy 'adapters_off' needs a UNet with LoRA adapters (add_lora first); "
                "for full fine-tuning use 'copy'"
            )
        return AdaptersOffReference(unet)
    raise InputError(f"unknown reference strategy {strategy!r}; choose one of {', '.join(REFERENCE_STRATEGIES)}")
