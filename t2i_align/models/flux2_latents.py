"""FLUX.2's latents: 2x2 patchify, BatchNorm normalisation, token packing and 4-axis position ids.

As Flux2Pipeline / Flux2KleinPipeline (diffusers pipeline_flux2.py, pipeline_flux2_klein.py) and
train_dreambooth_lora_flux2*.py prepare them:
- the VAE latents [B, C, H, W] (C = 32 in FLUX.2) are patchified, each 2 x 2 patch becoming 4C
  channels (channel c * 4 + 2 * dy + dx): [B, 4C, H/2, W/2] (_patchify_latents);
- normalised by the VAE's BatchNorm running statistics over those 4C channels: (x - mean) /
  sqrt(var + batch_norm_eps), no scaling or shift factor (_encode_vae_image; the pipeline undoes
  it before decoding);
- the denoiser sees one token per patchified position, [B, (H/2)(W/2), 4C], in row-major order
  (_pack_latents), with position ids (T, H, W, L) = (0, row, column, 0) (_prepare_latent_ids);
  text token l has the id (0, 0, 0, l) (_prepare_text_ids).
The model latents of this package (what the step noises and predict returns) are the
patchified, normalised [B, 4C, H/2, W/2]; packing is a reshape of them. Written here rather than
calling the pipelines' private static methods, which may change without notice;
tests/models/test_tiny_flux2.py checks that both give the same tensors. Ids are 2-D ([tokens, 4]):
the transformer reads the first row of 3-D ids anyway.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError


def check_patchable(height: int, width: int) -> None:
    """2 x 2 patchify needs even VAE latent sizes (images a multiple of 16 px for FLUX.2's 8x VAE)."""
    if height % 2 or width % 2:
        raise InputError(f"FLUX.2 patchifies 2 x 2 latent patches: latent size {height} x {width} must be even "
                         "(use a resolution that is a multiple of 16 px)")


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2], as Flux2Pipeline._patchify_latents."""
    b, c, h, w = latents.shape
    check_patchable(h, w)
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """[B, 4C, h, w] -> [B, C, 2h, 2w], as Flux2Pipeline._unpatchify_latents."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Patchified [B, C, h, w] -> tokens [B, h w, C], as Flux2Pipeline._pack_latents."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens [B, h w, C] -> [B, C, h, w] (what Flux2Pipeline._unpack_latents_with_ids scatters for
    the row-major ids of latent_ids)."""
    b, _, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, height, width)


def latent_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """[h w, 4] ids (0, row, column, 0) of the tokens of patchified h x w latents, as
    Flux2Pipeline._prepare_latent_ids (one row of its batch)."""
    ids = torch.zeros(height, width, 4)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(-1, 4).to(device=device, dtype=dtype)


def text_ids(length: int, device, dtype) -> torch.Tensor:
    """[L, 4] ids (0, 0, 0, l) of L text tokens, as Flux2Pipeline._prepare_text_ids."""
    ids = torch.zeros(length, 4)
    ids[:, 3] = torch.arange(length)
    return ids.to(device=device, dtype=dtype)


def batch_norm_factors(vae) -> tuple[list[float], list[float]]:
    """(std, mean) per patchified channel of an AutoencoderKLFlux2: sqrt(running_var +
    batch_norm_eps) and running_mean, in float32 as the pipeline computes them, as JSON-able lists
    (what the latent cache stores; float32 values survive the round trip exactly)."""
    bn = getattr(vae, "bn", None)
    if bn is None or getattr(bn, "running_var", None) is None:
        raise InputError(f"the VAE is a {type(vae).__name__} without BatchNorm statistics (vae.bn): FLUX.2 needs "
                         "its AutoencoderKLFlux2")
    std = torch.sqrt(bn.running_var.float() + vae.config.batch_norm_eps)
    return std.tolist(), bn.running_mean.float().tolist()


def normalise(patchified: torch.Tensor, std, mean) -> torch.Tensor:
    """(x - mean) / std per channel of patchified latents (std, mean: sequences or tensors)."""
    view = (1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(view).to(patchified.device, patchified.dtype)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(view).to(patchified.device, patchified.dtype)
    if std.shape[1] != patchified.shape[1]:
        raise InputError(f"FLUX.2 latents have {patchified.shape[1]} patchified channels but the VAE's BatchNorm "
                         f"statistics {std.shape[1]}")
    return (patchified - mean) / std
