"""Tiny, seeded random-weight SDXL / SD 2.1 / SD 1.5 pipelines for tests and smoke runs.

Why: every part of t2i_align (loading, LoRA, training, sampling, evaluation) must be
testable on a 2-core CPU without network access. These pipelines use the *real* diffusers /
transformers classes and the real CLIP vocabulary (49408 tokens, see ``clip_tokenizer``),
only with very small widths, in the style of diffusers' tests (``get_dummy_components``).
They are meant for 32x32 pixel images (16x16 latents, one VAE downsampling).

``resolve_model_path("tiny:sdxl")`` saves such a pipeline once (diffusers format,
safetensors) under ``cache_dir()/tiny/`` and returns the folder, so any code that loads
models from a path works unchanged with ``model.path=tiny:sdxl``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import torch

from .clip_tokenizer import cache_dir, offline_clip_tokenizer
from t2i_align.errors import InputError

TINY_VERSION = "v1"  # bump whenever the tiny architectures or seeds change (new cache folder)
TINY_RESOLUTION = 32  # pixel size the tiny models are built for (16x16 latents)
# sd3: SD3.5-shaped (tiny_sd3.py); flux: FLUX.1-dev-shaped (tiny_flux.py); flux2 / flux2_dev: FLUX.2
# [klein] / [dev]-shaped (tiny_flux2.py)
TINY_KINDS = ("sdxl", "sd21", "sd15", "sd3", "flux", "flux2", "flux2_dev")
TINY_PREFIX = "tiny:"

_SEED = 0
_TE_HIDDEN = 32  # CLIPTextModel (SD, and SDXL's first encoder)
_TE2_HIDDEN = 64  # SDXL's CLIPTextModelWithProjection (different width to catch mix-ups)
_TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim
_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise InputError(f"unknown tiny model kind {kind!r}; known kinds: {', '.join(TINY_KINDS)}")


def _text_encoder(hidden: int, with_projection: bool, pad_token_id: int):
    """A 2-layer CLIP text encoder with the full CLIP vocabulary (seeded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )
    torch.manual_seed(_SEED)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(scaling_factor: float):
    """Two-block AutoencoderKL: 32x32x3 pixels <-> 16x16x4 latents (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(_SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        mid_block_add_attention=False,
    )


def _unet(kind: str):
    """A two-level UNet2DConditionModel shaped like the real one of ``kind`` (seeded)."""
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
    )
    if kind == "sdxl":
        extra = dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            cross_attention_dim=_TE_HIDDEN + _TE2_HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _TE2_HIDDEN,
        )
    else:
        extra = dict(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_TE_HIDDEN,
            use_linear_projection=kind == "sd21",
            upcast_attention=kind == "sd21",
        )
    torch.manual_seed(_SEED)
    return UNet2DConditionModel(**common, **extra)


def _scheduler(kind: str):
    """The scheduler class the real pipeline ships, with SD's training noise schedule."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    if kind == "sdxl":
        return EulerDiscreteScheduler(**_SCHEDULER_CONFIG, prediction_type="epsilon", timestep_spacing="leading")
    if kind == "sd21":
        return DDIMScheduler(
            **_SCHEDULER_CONFIG, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False
        )
    return PNDMScheduler(**_SCHEDULER_CONFIG, prediction_type="epsilon", skip_prk_steps=True, set_alpha_to_one=False)


def build_tiny_pipeline(kind: str):
    """Build a tiny random-weight pipeline: ``"sdxl"``, ``"sd21"`` (v-prediction), ``"sd15"`` or
    ``"sd3"`` (a StableDiffusion3Pipeline shaped like SD3.5, built by tiny_sd3.py), ``"flux"`` (a
    FluxPipeline shaped like FLUX.1-dev, built by tiny_flux.py) or ``"flux2"`` (a
    Flux2KleinPipeline shaped like FLUX.2 [klein], built by tiny_flux2.py) or ``"flux2_dev"`` (a
    Flux2Pipeline shaped like FLUX.2 [dev], same file).

    Returns a ``StableDiffusionXLPipeline`` (sdxl) or ``StableDiffusionPipeline`` (sd21 /
    sd15, no safety checker). Weights are identical on every call (each part is built right
    after ``torch.manual_seed``); the global RNG state is restored afterwards.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    _check_kind(kind)
    if kind == "sd3":
        from .tiny_sd3 import build_tiny_sd3_pipeline

        return build_tiny_sd3_pipeline()
    if kind == "flux":
        from .tiny_flux import build_tiny_flux_pipeline

        return build_tiny_flux_pipeline()
    if kind == "flux2":
        from .tiny_flux2 import build_tiny_flux2_pipeline

        return build_tiny_flux2_pipeline()
    if kind == "flux2_dev":
        from .tiny_flux2 import build_tiny_flux2_dev_pipeline

        return build_tiny_flux2_dev_pipeline()
    with torch.random.fork_rng(devices=[]):
        unet = _unet(kind)
        if kind == "sdxl":
            return StableDiffusionXLPipeline(
                vae=_vae(scaling_factor=0.13025),
                text_encoder=_text_encoder(_TE_HIDDEN, with_projection=False, pad_token_id=49407),
                text_encoder_2=_text_encoder(_TE2_HIDDEN, with_projection=True, pad_token_id=0),
                tokenizer=offline_clip_tokenizer(),
                tokenizer_2=offline_clip_tokenizer(pad_token="!"),
                unet=unet,
                scheduler=_scheduler(kind),
                image_encoder=None,
                feature_extractor=None,
                add_watermarker=False,
            )
        return StableDiffusionPipeline(
            vae=_vae(scaling_factor=0.18215),
            text_encoder=_text_encoder(_TE_HIDDEN, with_projection=False, pad_token_id=49407),
            tokenizer=offline_clip_tokenizer(),
            unet=unet,
            scheduler=_scheduler(kind),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )


def tiny_kind(path: str) -> str | None:
    """``"sdxl"`` for ``"tiny:sdxl"`` etc.; None when ``path`` is not a tiny spec."""
    if not isinstance(path, str) or not path.startswith(TINY_PREFIX):
        return None
    kind = path[len(TINY_PREFIX) :]
    _check_kind(kind)
    return kind


def resolve_model_path(path: str) -> str:
    """Turn ``"tiny:<kind>"`` into a local diffusers folder (and ``"toy:sdxl"`` into the shipped
    pretrained toy model's folder); return any other path unchanged.

    The tiny pipeline is saved once into ``cache_dir()/tiny/<kind>-<TINY_VERSION>/``:
    built in a temporary folder next to it and renamed into place, so concurrent processes
    and interrupted runs never leave a half-written model behind. An existing folder is reused.
    """
    if isinstance(path, str) and path.startswith("toy:"):  # the pretrained toy model shipped in the package
        from t2i_align.toy.model import resolve_toy_path

        return resolve_toy_path(path)
    kind = tiny_kind(path)
    if kind is None:
        return path
    target = cache_dir() / "tiny" / f"{kind}-{TINY_VERSION}"
    if (target / "model_index.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        build_tiny_pipeline(kind).save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Someone else finished first, or a stale incomplete folder is in the way.
            if not (target / "model_index.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
