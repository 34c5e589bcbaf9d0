"""Load the parts of an SDXL / SD 2.1 / SD 1.5 pipeline that preference training needs.

Training never uses the pipeline object itself: it needs the UNet (trainable), the VAE and
text encoders (frozen, to make latents and prompt embeddings), the tokenizers, and a
``DDPMScheduler`` carrying the training noise schedule. ``load_parts`` loads each of them
with ``from_pretrained(path, subfolder=...)`` from a local diffusers folder, a hub id, or a
tiny test model (``"tiny:sdxl"``), optionally swapping in another VAE (e.g. the fp16-fixed
SDXL VAE) or another UNet (an SFT UNet, a previous run's ``final/`` folder).
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch

from .tiny import resolve_model_path
from t2i_align.errors import InputError, InputNotFoundError

@dataclass
class DiffusionParts:
    """Everything the training loop needs from a diffusion pipeline."""

    family: str  # "sdxl" or "sd"
    unet: "UNet2DConditionModel"  # noqa: F821
    vae: "AutoencoderKL"  # noqa: F821
    text_encoders: list  # [te] for sd, [te, te_2] for sdxl
    tokenizers: list
    noise_scheduler: "DDPMScheduler"  # noqa: F821
    prediction_type: str  # "epsilon" | "v_prediction" (from the scheduler config)
    source: str  # resolved local folder or hub id



def dtype_argument(dtype) -> dict:
    """The dtype keyword of diffusers' from_pretrained: `dtype` where diffusers has it (it
    deprecates `torch_dtype` with a warning on every call), `torch_dtype` on older releases."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _family(name: str):
    from t2i_align.families import get_family

    return get_family(name)


def _required_subfolders(family: str) -> tuple[str, ...]:
    return _family(family).REQUIRED_SUBFOLDERS


def _is_local(path: str) -> bool:
    """True when ``path`` names a local folder, or clearly means to (so a typo is not sent to the hub)."""
    if os.path.exists(path):
        return True
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def _detect_family(source: str, revision: str | None) -> str:
    """The family that claims the pipeline's model_index.json (families.detect_family: SDXL with a
    second text encoder or an XL class, else SD)."""
    from diffusers import DiffusionPipeline

    if _is_local(source) and not (pathlib.Path(source) / "model_index.json").is_file():
        raise InputNotFoundError(
            f"{source} is not a diffusers pipeline folder: model_index.json is missing "
            f"(pass family='sdxl' or 'sd' explicitly, or point to the pipeline's root folder)"
        )
    from t2i_align.families import detect_family

    return detect_family(DiffusionPipeline.load_config(source, revision=revision))


def _check_local_folder(source: str) -> None:
    """Clear error when a local model path is missing or is a file (e.g. a single-file checkpoint)."""
    root = pathlib.Path(source).expanduser()
    if root.is_file():
        raise InputError(
            f"model path {source} is a file, not a diffusers pipeline folder (single-file checkpoints are "
            f"not supported: convert with diffusers' from_single_file(...).save_pretrained(folder))"
        )
    if not root.is_dir():
        raise InputNotFoundError(f"model path {source} does not exist (expected a diffusers pipeline folder)")


def _check_subfolders(source: str, family: str) -> None:
    """Clear error naming the folder and the missing subfolders, before from_pretrained fails deep inside."""
    root = pathlib.Path(source).expanduser()
    missing = [name for name in _required_subfolders(family) if not (root / name).is_dir()]
    if missing:
        raise InputNotFoundError(
            f"{source} is not a complete diffusers {family} pipeline folder: missing subfolder(s) "
            f"{', '.join(missing)}"
        )


def _override_location(path: str, subfolder: str, what: str) -> tuple[str, str | None]:
    """Where a VAE / UNet override lives: (path, None) if it holds config.json, (path, subfolder) if
    it is a pipeline (or run output) folder with ``subfolder/config.json``."""
    path = resolve_model_path(path)
    if not _is_local(path):
        return path, None  # hub id: assume the model sits at the repo root (e.g. madebyollin/sdxl-vae-fp16-fix)
    root = pathlib.Path(path).expanduser()
    if (root / "config.json").is_file():
        return str(root), None
    if (root / subfolder / "config.json").is_file():
        return str(root), subfolder
    if (root / "unet" / "config.json").is_file() and (root / "trainer_state.json").is_file():
        return str(root), "unet"  # a training checkpoint keeps the denoiser in unet/ for every family
    raise InputNotFoundError(
        f"{what} path {path} holds neither config.json nor {subfolder}/config.json "
        f"(expected a diffusers {what} folder or a pipeline folder with a {subfolder}/ subfolder)"
    )


def _check_unet_family(unet, family: str, where: str) -> None:
    """A denoiser of another family (an SDXL UNet asked to train as SD, ...): caught early."""
    _family(family).check_denoiser(unet, where)


def _freeze(module):
    module.requires_grad_(False)
    module.eval()
    return module


def load_parts(
    path: str,
    family: str | None = None,
    vae_path: str | None = None,
    unet_path: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    text_encoder_dtype=None,
    with_vae: bool = True,
    with_text_encoders: bool = True,
    max_sequence_length: int | None = None,
    use_t5: bool = True,
    quantize_base: str | None = None,
    compute_dtype=torch.bfloat16,
) -> DiffusionParts:
    """Load UNet, VAE, text encoder(s), tokenizer(s) and a training DDPMScheduler.

    path: local diffusers pipeline folder, hub id, or ``"tiny:<kind>"``.
    family: "sdxl" | "sd" | None (auto-detect from model_index.json).
    vae_path / unet_path: optional replacements, each a model folder (with config.json) or a
        pipeline / run folder with a ``vae/`` / ``unet/`` subfolder (or a hub id of a model).
    revision / variant: passed to ``from_pretrained`` for the parts of ``path``.
    text_encoder_dtype: dtype for the frozen text encoders (default float32; transformers 5
        would otherwise load in the checkpoint's dtype, e.g. fp16 for the SDXL hub weights).
    with_vae / with_text_encoders: False skips loading them (training from a finished latent
        cache needs neither); ``vae`` is then None and ``text_encoders`` empty.
    max_sequence_length / use_t5: the T5 families' text options (model.max_sequence_length,
        model.use_t5); families without T5 refuse values other than the defaults.
    quantize_base / compute_dtype: "nf4" or "int8" loads the denoiser quantised by bitsandbytes
        (trainer.quantize_base, models/quantization.py), its unquantised leftovers in
        compute_dtype and then fp32, and FROZEN (LoRA trains on top); None: as below.

    UNet and VAE (the family's vae_class: AutoencoderKL, FLUX.2's AutoencoderKLFlux2) are loaded in float32 (mixed precision is the training loop's business;
    the SDXL VAE overflows in fp16). VAE and text encoders come back frozen in eval mode; the
    UNet in train mode with all parameters trainable (frozen when quantised). What differs
    between families (text encoders, the denoiser class and its check, the training scheduler:
    a ``DDPMScheduler`` built from the pipeline's scheduler config for the UNet families,
    ``prediction_type`` read from it) is the family module's (t2i_align/families/).
    """
    from t2i_align.families import FAMILIES

    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)} (or None to detect)")
    source = resolve_model_path(path)
    local = _is_local(source)
    if local:
        source = str(pathlib.Path(source).expanduser())
        _check_local_folder(source)
    if family is None:
        family = _detect_family(source, revision)
    if local:
        _check_subfolders(source, family)
    fam = _family(family)

    weights = dict(revision=revision, variant=variant)
    te_dtype = text_encoder_dtype if text_encoder_dtype is not None else torch.float32

    noise_scheduler, prediction_type = fam.load_scheduler(source, revision)
    text_encoders, tokenizers = fam.load_text_encoders(source, revision=revision, variant=variant, dtype=te_dtype,
                                                       with_text_encoders=with_text_encoders,
                                                       max_sequence_length=max_sequence_length, use_t5=use_t5)

    if not with_vae:
        vae = None
    elif vae_path is not None:
        vae_src, vae_sub = _override_location(vae_path, "vae", "VAE")
        vae = fam.vae_class().from_pretrained(vae_src, subfolder=vae_sub, **dtype_argument(torch.float32))
    else:
        vae = fam.vae_class().from_pretrained(source, subfolder="vae", **dtype_argument(torch.float32), **weights)

    denoiser = dtype_argument(torch.float32)
    if quantize_base is not None:
        from .quantization import bnb_config

        denoiser = dict(quantization_config=bnb_config(quantize_base, compute_dtype), **dtype_argument(compute_dtype))
    if unet_path is not None:
        unet_src, unet_sub = _override_location(unet_path, "unet", "UNet")
        unet = fam.load_denoiser(unet_src, unet_sub, **denoiser)
    else:
        unet = fam.load_denoiser(source, fam.DENOISER_SUBFOLDER, **denoiser, **weights)
    _check_unet_family(unet, family, unet_path or source)
    if quantize_base is not None:
        from .quantization import prepare_quantized

        prepare_quantized(unet)  # frozen; integer weights cannot require grad
    else:
        unet.requires_grad_(True)
    unet.train()

    return DiffusionParts(
        family=family,
        unet=unet,
        vae=_freeze(vae) if vae is not None else None,
        text_encoders=[_freeze(te) for te in text_encoders],
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
        prediction_type=prediction_type,
        source=source,
    )
