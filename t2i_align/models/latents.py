"""VAE latents: the posterior of an image batch, and the normalised sample the denoiser trains on.

The image path (encode_latents) and the latent cache (which stores the posterior's mean and std,
data/latent_cache.py) both go through posterior_latents, so from the same (mean, std, random
stream) they give the same latents. A family (t2i_align/families/) names the functions it uses.
"""

import torch

from t2i_align.noising.random import randn


def vae_class():
    """diffusers' AutoencoderKL: the VAE class of the families whose latents this module makes
    (loading.load_parts and evaluation load it, and VAE overrides, with the family's vae_class)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL


def latent_factors(vae) -> tuple[float, float | None]:
    """(scaling_factor, shift_factor or None) of an AutoencoderKL-style VAE config."""
    return vae.config.scaling_factor, getattr(vae.config, "shift_factor", None)


def posterior_latents(mean: torch.Tensor, std: torch.Tensor, generator, scaling_factor: float,
                      shift_factor: float | None) -> torch.Tensor:
    """A VAE posterior sample mean + std * z, shifted and scaled as the denoiser expects, in float32."""
    latents = mean + std * randn(mean.shape, generator, mean.device, dtype=mean.dtype)
    if shift_factor is not None:
        latents = latents - shift_factor
    return latents.float() * scaling_factor


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of `pixels`, in the VAE's dtype (fp32 for the SDXL VAE,
    which overflows in fp16)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean, dist.std


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator) -> torch.Tensor:
    """VAE posterior sample, scaled (and shifted, for VAEs that define shift_factor) as the denoiser
    expects. `generator`: a torch.Generator or a PerSampleGenerator."""
    mean, std = encode_posterior(vae, pixels)
    return posterior_latents(mean, std, generator, *latent_factors(vae))
