"""The SDXL family: Stable Diffusion XL (two CLIP text encoders, UNet with pooled text and time ids,
DDPM, epsilon or v).

Conditioning: the penultimate hidden states of both CLIP encoders concatenated, plus the pooled
projected embedding of the second one and six add_time_ids (original size, crop corner, target
size; model.time_ids). Latents, forward process and inversion as the SD family (unet_ddpm.py).
See families/__init__.py for the interface every family module provides.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.families.unet_ddpm import (BASE_SUBFOLDERS, load_clip_text_encoders, DENOISER_SUBFOLDER, LORA_PREFIX, LORA_TARGETS, LORA_KEY_FORMAT, TIME_IDS, check_captions, check_options, check_text_options, error_weights, sampling_kwargs,  # noqa: F401
                                          check_unet_kind, encode_latents, execution_device, forward_pairs,
                                          inversion_pairs, latent_factors, load_denoiser, load_scheduler,
                                          posterior_latents, predict, tokenize, vae_class)

NAME = "sdxl"
REQUIRED_SUBFOLDERS = BASE_SUBFOLDERS + ("text_encoder_2", "tokenizer_2")
# Which tensors of encode_prompts the latent cache stores (cache name -> encode_prompts key).
TEXT_CACHE = {"hidden": "encoder_hidden_states", "pooled": "text_embeds"}


def claims(model_index: dict) -> bool:
    """A pipeline's model_index.json is SDXL's when it has a second text encoder or an XL class."""
    class_name = str(model_index.get("_class_name", ""))
    te2 = model_index.get("text_encoder_2")
    has_te2 = isinstance(te2, (list, tuple)) and len(te2) == 2 and te2[1] is not None
    return has_te2 or "XL" in class_name


def pipeline_class(model_index: dict | None = None):
    """The diffusers pipeline that samples this family (evaluation, dataset builders, LoRA files);
    one class for every model of the family (`model_index` is unused)."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool,
                       max_sequence_length: int | None = None, use_t5: bool = True) -> tuple[list, list]:
    """([CLIPTextModel, CLIPTextModelWithProjection] or [] without text encoders, [2 CLIPTokenizer])."""
    check_text_options(max_sequence_length, use_t5)
    return load_clip_text_encoders(source, ["CLIPTextModel", "CLIPTextModelWithProjection"], revision=revision,
                                   variant=variant, dtype=dtype, with_text_encoders=with_text_encoders)


def check_denoiser(unet, where: str) -> None:
    check_unet_kind(unet, True, NAME, where)


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list) -> dict:
    """``{"encoder_hidden_states": [B, 77, D1 + D2], "text_embeds": [B, P]}`` (text_encoder_2's
    projected pooled embedding), as StableDiffusionXLPipeline.encode_prompt without classifier-free
    guidance and clip_skip; on the first text encoder's device, in its dtype."""
    captions = check_captions(captions)
    if len(text_encoders) != 2 or len(tokenizers) != 2:
        raise InputError(
            f"sdxl needs 2 text encoders and 2 tokenizers, got {len(text_encoders)} and {len(tokenizers)}"
        )
    hidden = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenize(captions, tokenizer).to(execution_device(encoder))
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's first output: text_embeds of CLIPTextModelWithProjection
    if pooled.ndim != 2:
        raise InputError(
            "sdxl's second text encoder must be a CLIPTextModelWithProjection (pooled text_embeds output); "
            f"got {type(text_encoders[1]).__name__}"
        )
    device = hidden[0].device
    return {
        "encoder_hidden_states": torch.cat([h.to(device) for h in hidden], dim=-1),
        "text_embeds": pooled.to(device),
    }


def sdxl_time_ids(original_sizes: torch.Tensor, crop_top_left: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL micro-conditioning ``add_time_ids`` [B, 6] (float32):
    (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    original_sizes: [B, 2] as (height, width) of each image before resize/crop.
    crop_top_left: [B, 2] as (top, left) of the crop. target_size: (height, width) trained at.
    Output is on original_sizes' device.
    """
    original_sizes = torch.as_tensor(original_sizes)
    crop_top_left = torch.as_tensor(crop_top_left, device=original_sizes.device)
    if original_sizes.ndim != 2 or original_sizes.shape[1] != 2:
        raise InputError(f"original_sizes must be [B, 2] (h, w), got shape {tuple(original_sizes.shape)}")
    if crop_top_left.shape != original_sizes.shape:
        raise InputError(
            f"crop_top_left must be [B, 2] like original_sizes {tuple(original_sizes.shape)}, "
            f"got {tuple(crop_top_left.shape)}"
        )
    if len(target_size) != 2:
        raise InputError(f"target_size must be (height, width), got {target_size!r}")
    target = torch.tensor(target_size, dtype=torch.float32, device=original_sizes.device)
    target = target.expand(original_sizes.shape[0], 2)
    return torch.cat([original_sizes.float(), crop_top_left.float(), target], dim=1)


def pair_time_ids(mode: str, original_sizes_w, original_sizes_l, crop_top_left, resolution: int,
                  with_rejected: bool) -> torch.Tensor:
    """SDXL add_time_ids for the chosen rows, then the rejected rows (with_rejected).

    "fixed": (res, res, 0, 0, res, res) for every image, as the Diffusion-DPO, DCPO and InPO
    releases train and as SDXL pipelines pass at inference (model.time_ids in conf/model/sdxl.yaml).
    "original": each image's own original size and the pair's crop corner (MaPO's release uses
    jpg_0's for both; SDXL's pretraining used the real ones). Most Pick-a-Pic images are smaller
    than 1024 px, so "original" teaches the preference under a low-resolution-source condition
    that inference never asks for."""
    if mode not in TIME_IDS:
        raise InputError(f"unknown SDXL time_ids mode {mode!r}; choose one of {TIME_IDS}")
    target = (resolution, resolution)
    count = len(original_sizes_w)
    if mode == "fixed":
        sizes = torch.full((count, 2), resolution, dtype=torch.long)
        ids = sdxl_time_ids(sizes, torch.zeros(count, 2, dtype=torch.long), target)
        return torch.cat([ids, ids]) if with_rejected else ids
    ids = sdxl_time_ids(original_sizes_w, crop_top_left, target)
    if with_rejected:
        ids = torch.cat([ids, sdxl_time_ids(original_sizes_l, crop_top_left, target)])
    return ids


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device, guidance: float | None = None) -> dict:
    """The UNet's conditioning from `text` (encode_prompts' tensors, rows laid out as the latents:
    chosen, then rejected): hidden states, and added_cond_kwargs with the pooled embedding and
    the add_time_ids of ``pair_time_ids`` (fixed, or each image's original size and the pair's crop).
    guidance (model.guidance) is refused by check_options for this family."""
    ids = pair_time_ids(time_ids, original_sizes_w, original_sizes_l, crop_top_left, resolution, with_rejected)
    return {"encoder_hidden_states": text["encoder_hidden_states"].to(device),
            "added_cond_kwargs": {"text_embeds": text["text_embeds"].to(device), "time_ids": ids.to(device)}}
