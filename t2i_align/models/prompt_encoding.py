"""Turn captions into the UNet's text conditioning, exactly as the diffusers pipelines do.

Training must condition the UNet the same way inference does, or the aligned model is
sampled off-distribution. SDXL: penultimate hidden states of both CLIP encoders,
concatenated, plus the pooled projected embedding of the second encoder and six "time ids"
(original size, crop corner, target size). SD 1.5 / 2.1: the last hidden state of the one
encoder.
"""

from __future__ import annotations

import torch
from t2i_align.errors import InputError


def _execution_device(module) -> torch.device:
    return next(module.parameters()).device


def _tokenize(captions: list[str], tokenizer) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list, family: str) -> dict:
    """Encode a batch of captions with frozen text encoders (no grad).

    Returns ``{"encoder_hidden_states": [B, 77, D]}``; for ``family="sdxl"`` also
    ``"text_embeds": [B, P]`` (text_encoder_2's projected pooled embedding). Matches
    ``StableDiffusionXLPipeline.encode_prompt`` / ``StableDiffusionPipeline.encode_prompt``
    without classifier-free guidance and clip_skip. Tensors are on the (first) text
    encoder's device, in its dtype.
    """
    if isinstance(captions, str):
        raise TypeError("encode_prompts expects a list of captions, got a single string")
    captions = list(captions)
    if family == "sdxl":
        if len(text_encoders) != 2 or len(tokenizers) != 2:
            raise InputError(
                f"sdxl needs 2 text encoders and 2 tokenizers, got {len(text_encoders)} and {len(tokenizers)}"
            )
        hidden = []
        pooled = None
        for tokenizer, encoder in zip(tokenizers, text_encoders):
            ids = _tokenize(captions, tokenizer).to(_execution_device(encoder))
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
    if family == "sd":
        if len(text_encoders) != 1 or len(tokenizers) != 1:
            raise InputError(f"sd needs 1 text encoder and 1 tokenizer, got {len(text_encoders)} and {len(tokenizers)}")
        encoder = text_encoders[0]
        ids = _tokenize(captions, tokenizers[0]).to(_execution_device(encoder))
        return {"encoder_hidden_states": encoder(ids).last_hidden_state}
    raise InputError(f"unknown model family {family!r}; choose 'sdxl' or 'sd'")


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
