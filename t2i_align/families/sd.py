"""The SD family: Stable Diffusion 1.5 / 2.1 (one CLIP text encoder, UNet, DDPM, epsilon or v).

Conditioning: the last hidden state of the one text encoder. Latents: the VAE posterior sample
times scaling_factor. Forward process: DDPM with a shared t and noise per pair, target epsilon or
v (read from the scheduler config: v for SD 2.1-768). Inversion: DDIM. See families/__init__.py
for the interface every family module provides.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.families.unet_ddpm import (BASE_SUBFOLDERS, load_clip_text_encoders, DENOISER_SUBFOLDER, LORA_PREFIX, LORA_TARGETS, LORA_KEY_FORMAT, check_captions, check_options, check_text_options, error_weights, sampling_kwargs, check_unet_kind,  # noqa: F401
                                          encode_latents, execution_device, forward_pairs, inversion_pairs,
                                          latent_factors, load_denoiser, load_scheduler, posterior_latents,
                                          predict, tokenize, vae_class)

NAME = "sd"
REQUIRED_SUBFOLDERS = BASE_SUBFOLDERS
# Which tensors of encode_prompts the latent cache stores (cache name -> encode_prompts key).
TEXT_CACHE = {"hidden": "encoder_hidden_states"}


def claims(model_index: dict) -> bool:
    """Whether a pipeline's model_index.json is this family's (the fallback: any pipeline)."""
    return True


def pipeline_class(model_index: dict | None = None):
    """The diffusers pipeline that samples this family (evaluation, dataset builders, LoRA files);
    one class for every model of the family (`model_index` is unused)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool,
                       max_sequence_length: int | None = None, use_t5: bool = True) -> tuple[list, list]:
    """([CLIPTextModel] or [] without text encoders, [CLIPTokenizer])."""
    check_text_options(max_sequence_length, use_t5)
    return load_clip_text_encoders(source, ["CLIPTextModel"], revision=revision, variant=variant, dtype=dtype,
                                   with_text_encoders=with_text_encoders)


def check_denoiser(unet, where: str) -> None:
    check_unet_kind(unet, False, NAME, where)


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list) -> dict:
    """``{"encoder_hidden_states": [B, 77, D]}``, as StableDiffusionPipeline.encode_prompt without
    classifier-free guidance and clip_skip; on the text encoder's device, in its dtype."""
    captions = check_captions(captions)
    if len(text_encoders) != 1 or len(tokenizers) != 1:
        raise InputError(f"sd needs 1 text encoder and 1 tokenizer, got {len(text_encoders)} and {len(tokenizers)}")
    encoder = text_encoders[0]
    ids = tokenize(captions, tokenizers[0]).to(execution_device(encoder))
    return {"encoder_hidden_states": encoder(ids).last_hidden_state}


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device, guidance: float | None = None) -> dict:
    """The UNet's conditioning from `text` (encode_prompts' tensors, rows laid out as the latents:
    chosen, then rejected). The size / crop / time_ids arguments are SDXL's and unused here;
    guidance (model.guidance, refused by check_options for this family) too."""
    return {"encoder_hidden_states": text["encoder_hidden_states"].to(device)}
