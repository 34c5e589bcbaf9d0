"""LoRA on the UNet with peft: add, save for diffusers pipelines, checkpoint state.

LoRA trains a few low-rank matrices instead of the whole UNet, and lets the DPO reference be
the same module with the adapters switched off (see ``reference.py``). Saved weights are a
``pytorch_lora_weights.safetensors`` that any diffusers pipeline loads with
``pipe.load_lora_weights(folder)``; the adapter config is stored with them, because without
it a ``lora_alpha`` different from the rank is lost on reload and outputs change.
"""

from __future__ import annotations

import pathlib

import torch
from t2i_align.errors import InputError

DEFAULT_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Only initialisations that start with B = 0 and leave the base weights untouched: the LoRA
# model then starts equal to the base model, and disabling the adapters gives the base model
# back (needed by the "adapters_off" reference). Weight-modifying inits (pissa, olora, ...) are refused.
_INITS = {"gaussian": "gaussian", "default": True}


def _adapter_name(unet) -> str:
    """The single peft adapter on ``unet`` (clear error for none / several)."""
    config = getattr(unet, "peft_config", None)
    if not config:
        raise InputError("the UNet has no LoRA adapter; call add_lora(unet, ...) first")
    if len(config) != 1:
        raise InputError(f"expected exactly one LoRA adapter on the UNet, found {sorted(config)}")
    return next(iter(config))


def add_lora(
    unet,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules=DEFAULT_TARGET_MODULES,
    init: str = "gaussian",
):
    """Add a LoRA adapter (name "default") to the attention projections of ``unet``; returns its ``LoraConfig``.

    rank: LoRA rank r. alpha: lora_alpha (None -> rank, i.e. scale 1). dropout: LoRA dropout.
    target_modules: module name suffixes to adapt. init: "gaussian" (A ~ N(0, 1/r), B = 0, as
    diffusers' training scripts) or "default" (peft's Kaiming A, B = 0).
    ``add_adapter`` freezes every base parameter: only the LoRA weights stay trainable.
    """
    from peft import LoraConfig

    if int(rank) < 1:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}")
    if init not in _INITS:
        raise InputError(
            f"unknown LoRA init {init!r}; choose one of {', '.join(_INITS)} "
            "(inits that rewrite the base weights would break the adapters_off reference)"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(dropout),
        init_lora_weights=_INITS[init],
        target_modules=list(target_modules),
    )
    unet.add_adapter(config)
    return config


def cast_frozen_base(model, dtype) -> None:
    """Hold the frozen (non-LoRA) weights and floating buffers of `model` in `dtype`, the LoRA
    weights stay fp32 master weights: as diffusers' LoRA scripts keep the base in weight_dtype
    (it is only ever used under autocast), which halves its memory (FLUX.1-dev: 48 -> 24 GB)."""
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                setattr(module, name, buffer.to(dtype))


def save_lora(unet, out_dir, family: str, state_dict: dict | None = None) -> pathlib.Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format, with the adapter config).

    family: a family name, "sdxl" or "sd" (its pipeline class's ``save_lora_weights`` writes it).
    Pass the plain module (not DDP / accelerate-wrapped). ``state_dict``: the module's whole state
    dict gathered from a sharded engine (FSDP / ZeRO-3, training/final.py), whose LoRA entries are
    written instead of the module's own (partial) tensors. Returns the file path.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from t2i_align.families import get_family

    fam = get_family(family)
    pipeline = fam.pipeline_class()
    name = _adapter_name(unet)
    layers = get_peft_model_state_dict(unet, state_dict=state_dict, adapter_name=name)
    if fam.LORA_KEY_FORMAT == "diffusers":  # the UNet scripts' legacy key names; transformers keep peft's
        layers = convert_state_dict_to_diffusers(layers)
    out_dir = pathlib.Path(out_dir)
    pipeline.save_lora_weights(
        save_directory=out_dir,
        **{f"{fam.LORA_PREFIX}_lora_layers": layers,
           f"{fam.LORA_PREFIX}_lora_adapter_metadata": unet.peft_config[name].to_dict()},
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
    return out_dir / LORA_WEIGHT_NAME


def lora_trainable_state(unet) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``unet`` (peft key names, detached copies) for a training checkpoint."""
    from peft.utils import get_peft_model_state_dict

    name = _adapter_name(unet)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}


def load_lora_trainable_state(unet, state: dict[str, torch.Tensor]) -> None:
    """Restore weights saved by ``lora_trainable_state`` into ``unet``'s LoRA adapter (in place).

    Raises ValueError naming the keys when ``state`` does not fit the adapter (other rank or
    target modules), instead of silently leaving weights at their initial values.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    name = _adapter_name(unet)
    expected = set(get_peft_model_state_dict(unet, adapter_name=name))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(
            f"LoRA state does not match the UNet's adapter: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    try:
        set_peft_model_state_dict(unet, state, adapter_name=name)
    except RuntimeError as err:  # shape mismatch, e.g. a different rank
        raise InputError(f"LoRA state does not fit the UNet's adapter (different rank?): {err}") from err
