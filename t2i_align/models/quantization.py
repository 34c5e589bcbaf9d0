"""A quantised frozen base denoiser under LoRA (QLoRA): trainer.quantize_base = null | nf4 | int8.

With LoRA the base weights never change, so they can be stored in 4 bits (NF4, the QLoRA paper's
data type) or 8 bits (LLM.int8) by bitsandbytes: FLUX.1-dev's 11.9B-parameter transformer holds
6.2 GiB of weights in nf4 instead of the 44 GiB of fp32 this trainer otherwise keeps under LoRA
(scripts/memory_table.py). It is loaded as
diffusers' FLUX QLoRA example does (examples/research_projects/flux_lora_quantization in the
diffusers repository): ``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit,
bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=<the mixed-precision dtype>), dtype=<same>)``,
then ``peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)``, which
freezes every parameter and upcasts only the few that bitsandbytes leaves unquantised (norms,
biases, embeddings, convolutions: under 1% of the weights) to fp32; the quantised Linear weights
stay 4 / 8 bit. Gradient checkpointing stays diffusers' own (trainer.gradient_checkpointing,
non-reentrant), so peft's input-gradient hook is not needed. LoRA goes on top; its weights are
fp32 (master weights; the base's matmuls run in the compute dtype).

The DPO reference is the quantised base itself with the adapters off: the only sensible strategy
(a frozen copy would be a second quantised model, cpu_offload cannot stream 4-bit weights).

check_quantize_base refuses, with one-line errors at start-up (before the data and models load),
a quantised base without LoRA, with the copy / cpu_offload reference, without bitsandbytes, or
without a CUDA GPU. bitsandbytes has no CPU kernels: the tests check the wiring only (what reaches
from_pretrained, what is trainable, the errors); the numerics need a GPU.
"""

from __future__ import annotations

import importlib.metadata

import torch

from t2i_align.errors import InputError, MissingDependencyError

QUANTIZE_BASE = ("nf4", "int8")
BITS = {"nf4": "4-bit", "int8": "8-bit"}
# diffusers' bitsandbytes quantizer refuses older releases (it needs bitsandbytes >= 0.43.3).
MIN_BITSANDBYTES = "0.43.3"


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version, or None when it is not installed."""
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible (bitsandbytes' quantised layers run only there)."""
    return torch.cuda.is_available()


def check_quantize_base(kind, use_lora: bool, reference_strategy: str) -> None:
    """Refuse a trainer.quantize_base setting that cannot train (one-line errors); None passes.

    reference_strategy: the resolved one (recipe.resolve_reference_strategy), "none" for methods
    without a reference."""
    if kind is None:
        return
    if kind not in QUANTIZE_BASE:
        raise InputError(f"trainer.quantize_base={kind!r}: choose null, nf4 or int8")
    if not use_lora:
        raise InputError(f"trainer.quantize_base={kind} needs trainer.lora.enabled=true (a quantised base "
                         "stays frozen: only LoRA adapters on top of it train)")
    if reference_strategy in ("copy", "cpu_offload"):
        raise InputError(f"trainer.quantize_base={kind} needs trainer.reference=adapters_off (or auto), not "
                         f"{reference_strategy}: the reference is the quantised base with the adapters off")
    from packaging.version import Version

    version = bitsandbytes_version()
    if version is None:
        raise MissingDependencyError(f"trainer.quantize_base={kind} needs bitsandbytes: "
                                     "pip install 't2i_align[bnb]'")
    if Version(version) < Version(MIN_BITSANDBYTES):
        raise MissingDependencyError(f"trainer.quantize_base={kind} needs bitsandbytes >= {MIN_BITSANDBYTES} "
                                     f"(installed: {version}): pip install -U bitsandbytes")
    if not cuda_available():
        raise InputError(f"trainer.quantize_base={kind}: bitsandbytes {BITS[kind]} needs a CUDA GPU (none found)")


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the quantised layers compute in: the mixed-precision dtype, bf16 (QLoRA's) when
    trainer.mixed_precision is "no"."""
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def bnb_config(kind: str, dtype: torch.dtype):
    """diffusers' BitsAndBytesConfig for `kind` ("nf4": 4-bit NormalFloat, compute in `dtype`;
    "int8": LLM.int8)."""
    from diffusers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise InputError(f"trainer.quantize_base={kind!r}: choose null, nf4 or int8")


def prepare_quantized(model):
    """Freeze the quantised base and upcast its unquantised leftovers to fp32 (peft's
    prepare_model_for_kbit_training, without its gradient-checkpointing hook); in place."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def trainable_to_fp32(model) -> None:
    """Hold the trainable (LoRA) weights in fp32, whatever dtype the base was loaded in (as
    diffusers' cast_training_params): they are the master weights the optimizer updates."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def is_quantized(model) -> bool:
    """True for a model loaded with a quantization_config (diffusers sets is_quantized)."""
    return bool(getattr(model, "is_quantized", False))
