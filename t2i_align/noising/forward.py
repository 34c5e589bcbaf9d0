"""Forward noising q(x_t | x_0) for preference pairs.

Diffusion-DPO, MaPO and DCPO draw one timestep and one noise tensor per pair and apply them to
both the chosen and the rejected latent (DiffusionDPO train.py; mapo train.py), so that the
difference of the two denoising errors measures the preference and not the noise draw.
Timesteps are drawn per pair, so a batch of several pairs is correct.
"""

import torch

from t2i_align.noising.random import randint, randn
from t2i_align.errors import InputError


def sample_pair_timesteps(num_pairs: int, num_train_timesteps: int, generator, device) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, one per pair (long tensor [num_pairs]). `generator`: a torch.Generator
    or a noising.random.PerSampleGenerator (one stream per pair)."""
    return randint(num_train_timesteps, num_pairs, generator, device)


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The regression target: the noise (epsilon models) or v = sqrt(abar) eps - sqrt(1-abar) x_0
    (v-prediction models such as SD 2.1-768; Salimans & Ho 2022)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise InputError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


def forward_noise_pairs(noise_scheduler, latents_w: torch.Tensor, latents_l: torch.Tensor | None,
                        generator: torch.Generator, prediction_type: str):
    """Noise each pair with a shared t and shared noise.

    Returns (noisy, target, timesteps) with the chosen images first and then the rejected ones
    along the batch dimension ([2B, ...]); with latents_l None (SFT) only the chosen ([B, ...]).
    """
    num_pairs = latents_w.shape[0]
    timesteps = sample_pair_timesteps(num_pairs, noise_scheduler.config.num_train_timesteps,
                                      generator, latents_w.device)
    noise = randn(latents_w.shape, generator, latents_w.device, dtype=latents_w.dtype)
    if latents_l is not None:
        latents = torch.cat([latents_w, latents_l])
        noise = torch.cat([noise, noise])
        timesteps = torch.cat([timesteps, timesteps])
    else:
        latents = latents_w
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type)
    return noisy, target, timesteps
