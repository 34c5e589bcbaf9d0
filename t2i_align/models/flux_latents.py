"""FLUX.1's packed latents and position ids (the layout FluxTransformer2DModel takes).

FLUX.1 turns each 2 x 2 patch of the [B, C, H, W] latents into one image token of 4C numbers:
[B, (H/2)(W/2), 4C]; the token at patch row r, column c gets the position id (0, r, c), and
every text token the id (0, 0, 0). Written here rather than calling FluxPipeline's private
static methods (_pack_latents, _unpack_latents, _prepare_latent_image_ids, diffusers 0.42), which
may change without notice; tests/families/test_flux.py checks that both give the same tensors.
Ids are 2-D ([tokens, 3]); the 3-D form with a batch axis is deprecated in diffusers.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError


def check_packable(height: int, width: int) -> None:
    """2 x 2 packing needs even latent sizes (images a multiple of 16 px for FLUX.1's 8x VAE)."""
    if height % 2 or width % 2:
        raise InputError(f"FLUX packs 2 x 2 latent patches: latent size {height} x {width} must be even "
                         "(use a resolution that is a multiple of 16 px)")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], as FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    check_packable(h, w)
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (H/2)(W/2), 4C] -> [B, C, H, W] for latent sizes H x W, as FluxPipeline._unpack_latents
    (which takes pixel sizes and the VAE's scale factor instead)."""
    b, _, channels = packed.shape
    check_packable(height, width)
    return packed.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, channels // 4, height, width)


def latent_image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """[(H/2)(W/2), 3] position ids (0, row, column) of the packed tokens of H x W latents, as
    FluxPipeline._prepare_latent_image_ids(batch, H // 2, W // 2, ...)."""
    check_packable(height, width)
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def text_ids(length: int, device, dtype) -> torch.Tensor:
    """[L, 3] zeros: FLUX.1's text tokens all sit at position (0, 0, 0)."""
    return torch.zeros(length, 3, device=device, dtype=dtype)
