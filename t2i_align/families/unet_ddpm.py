"""What the UNet families (SD 1.5 / 2.1, SDXL) share: a UNet2DConditionModel on DDPM noising with
epsilon or v targets, an AutoencoderKL, DDIM inversion, CLIP tokenisation.

sd.py and sdxl.py name these functions in their own interface; nothing outside t2i_align/families/
imports this module.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.families.guidance import refuse_guidance
from t2i_align.models.latents import encode_latents, latent_factors, posterior_latents, vae_class  # noqa: F401 (re-exported)
from t2i_align.noising.ddim_inversion import inversion_noise_pairs
from t2i_align.noising.forward import forward_noise_pairs

BASE_SUBFOLDERS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
DENOISER_SUBFOLDER = "unet"  # where the pipeline folder keeps the denoiser
LORA_PREFIX = "unet"  # the denoiser's name in diffusers LoRA files (save_lora_weights(unet_lora_layers=...))
# Default LoRA targets (trainer.lora.target_modules: null): the attention projections, as the
# diffusers SD / SDXL LoRA scripts and the Diffusion-DPO / MaPO LoRA releases adapt.
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
# LoRA file keys: converted to diffusers' names (convert_state_dict_to_diffusers), as the diffusers
# SD / SDXL LoRA scripts save them.
LORA_KEY_FORMAT = "diffusers"

# SDXL's add_time_ids modes (model.time_ids); every UNet family's config carries the key.
TIME_IDS = ("fixed", "original")

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_options(time_ids: str, flow: dict | None = None, guidance: float | None = None) -> None:
    """Refuse a model option this family does not know: a bad model.time_ids, model.flow (the
    sigma sampling and loss weighting of rectified-flow families; UNet families use DDPM noising),
    or model.guidance (the guidance embedding of guidance-distilled transformers)."""
    refuse_guidance(guidance)
    if time_ids not in TIME_IDS:
        raise InputError(f"model.time_ids={time_ids!r}: choose one of {TIME_IDS}")
    if flow:
        raise InputError(f"model.flow ({', '.join(flow)}) applies to rectified-flow families (sd3, flux); this UNet "
                         "family trains with DDPM noising: remove model.flow")


def check_text_options(max_sequence_length, use_t5: bool) -> None:
    """model.max_sequence_length / model.use_t5 are T5 options: UNet families have no T5."""
    if max_sequence_length is not None or not use_t5:
        raise InputError("model.max_sequence_length and model.use_t5 apply to families with a T5 encoder "
                         "(sd3, flux); this UNet family has CLIP encoders only: remove them")


def load_scheduler(source: str, revision: str | None):
    """(DDPMScheduler built from the pipeline's scheduler config, prediction_type). Euler / DDIM /
    PNDM configs share the training noise schedule; prediction_type is read from it."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(
            f"{source}: scheduler prediction_type {prediction_type!r} is not supported "
            f"(expected 'epsilon' or 'v_prediction')"
        )
    return noise_scheduler, prediction_type


def load_clip_text_encoders(source: str, encoder_classes: list[str], *, revision, variant, dtype,
                            with_text_encoders: bool) -> tuple[list, list]:
    """(text encoders or [] without them, CLIP tokenizers) from the pipeline's text_encoder,
    text_encoder_2, ... subfolders; encoder_classes names the transformers class of each
    (CLIPTextModel / CLIPTextModelWithProjection)."""
    import transformers

    text_encoders, tokenizers = [], []
    for i, class_name in enumerate(encoder_classes):
        suffix = "" if i == 0 else f"_{i + 1}"
        tokenizers.append(transformers.CLIPTokenizer.from_pretrained(source, subfolder=f"tokenizer{suffix}",
                                                                     revision=revision))
        if with_text_encoders:
            text_encoders.append(getattr(transformers, class_name).from_pretrained(
                source, subfolder=f"text_encoder{suffix}", dtype=dtype, revision=revision, variant=variant))
    return text_encoders, tokenizers


def load_denoiser(source: str, subfolder: str | None, **kwargs):
    """The UNet (UNet2DConditionModel.from_pretrained; kwargs: dtype, revision, variant)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, **kwargs)


def is_xl_unet(unet) -> bool:
    """SDXL UNets take pooled text + time ids ("text_time"); SD UNets do not."""
    return unet.config.get("addition_embed_type") == "text_time"


def check_unet_kind(unet, want_xl: bool, family: str, where: str) -> None:
    """Catch an SDXL UNet asked to train as SD (or the reverse) early, naming where it came from."""
    is_xl = is_xl_unet(unet)
    if is_xl != want_xl:
        kind = "an SDXL" if is_xl else "an SD (non-XL)"
        raise InputError(f"the UNet from {where} is {kind} UNet, but family={family!r} was requested")


def execution_device(module) -> torch.device:
    return next(module.parameters()).device


def tokenize(captions: list[str], tokenizer) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def check_captions(captions) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("encode_prompts expects a list of captions, got a single string")
    return list(captions)


def predict(model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
    """The UNet's prediction (epsilon or v) for `noisy` at `timesteps` under the conditioning of
    the family's `conditioning` (encoder_hidden_states, and SDXL's added_cond_kwargs). `model`: the
    UNet (possibly wrapped), or a reference strategy returning a tensor."""
    out = model(noisy, timesteps, cond["encoder_hidden_states"], added_cond_kwargs=cond.get("added_cond_kwargs"))
    return out if torch.is_tensor(out) else out.sample


def forward_pairs(noise_scheduler, latents_w, latents_l, generator, prediction_type: str, flow: dict | None = None):
    """DDPM q(x_t | x_0) with a shared t and noise per pair; target epsilon or v
    (noising/forward.py). Returns (noisy, target, timesteps), chosen first. `flow` (model.flow) is
    refused by check_options for this family."""
    return forward_noise_pairs(noise_scheduler, latents_w, latents_l, generator, prediction_type)


def inversion_pairs(noise_scheduler, latents_w, latents_l, predict_fn, generator, prediction_type: str, *,
                    num_steps: int, eta: float, evaluate_at: str, flow: dict | None = None):
    """InPO's x_t by DDIM inversion of x_0 with `predict_fn(x, t)`, target = the implied noise (or v)
    (noising/ddim_inversion.py). Returns (noisy, target, timesteps), chosen first."""
    return inversion_noise_pairs(noise_scheduler, latents_w, latents_l, predict_fn, generator, prediction_type,
                                 num_steps=num_steps, eta=eta, evaluate_at=evaluate_at)


def error_weights(timesteps: torch.Tensor, flow: dict | None = None) -> None:
    """Per-row weights of the denoising errors: none for the UNet families (plain epsilon / v MSE,
    as Diffusion-DPO and the other releases train)."""
    return None


def sampling_kwargs(pipe) -> dict:
    """Extra pipeline-call arguments for sampling: none for the UNet families."""
    return {}
