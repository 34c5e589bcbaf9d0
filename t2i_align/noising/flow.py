"""Rectified-flow noising for flow-matching transformers (SD3 / SD3.5, FLUX), as diffusers trains them.

Forward process and target (diffusers' train_dreambooth_lora_sd3.py / _flux.py):
    x_t = (1 - sigma) * x_0 + sigma * noise,    target v = noise - x_0,
with one sigma and one noise draw per pair, applied to both images (as Diffusion-DPO does for
DDPM noising), so the difference of the two velocity errors measures the preference.

Sigma sampling (diffusers training_utils.compute_density_for_timestep_sampling, re-implemented
here on per-sample random streams so a draw does not depend on the batch split or on the global
RNG): u ~ uniform, logit_normal (u = sigmoid(N(mean, std)); SD3's default mean 0, std 1) or
"mode" (u <- 1 - u - mode_scale (cos^2(pi u / 2) - 1 + u), mode_scale 1.29); u indexes the
scheduler's sigma table (index = floor(u * N)), which for SD3 is already shifted (static shift 3:
sigma <- 3 sigma / (1 + 2 sigma)); FLUX.1-dev's scheduler uses dynamic shifting and leaves the
table unshifted, so its scripts train on unshifted sigmas.

Loss weighting (diffusers compute_loss_weighting_for_sd3): none = 1, "sigma_sqrt" = sigma^-2,
"cosmap" = 2 / (pi (1 - 2 sigma + 2 sigma^2)).

Inversion (InPO's analogue on flow models; the ODE integration of diffusers' community
RF-inversion pipeline): x <- x + (sigma_{k+1} - sigma_k) v(x, sigma_k) from sigma 0 up to each
sample's own sigma; then the implied noise eps* = (x_sigma - (1 - sigma) x_0) / sigma and the
velocity target v* = (x_sigma - x_0) / sigma, so x_sigma lies exactly on the interpolation path
between x_0 and eps* (a derived recipe, not from a release).
"""

from __future__ import annotations

import math

import torch

from t2i_align.errors import InputError
from t2i_align.noising.random import rand, randn

WEIGHTING_SCHEMES = ("uniform", "logit_normal", "mode")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


def check_flow_settings(flow: dict | None, defaults: dict) -> dict:
    """model.flow over a family's `defaults`, checked: a clear error for an unknown key or value
    (the weighting scheme, the loss weighting, a positive logit_std, true / false switches)."""
    flow = dict(flow or {})
    unknown = sorted(set(flow) - set(defaults))
    if unknown:
        raise InputError(f"model.flow has unknown keys {unknown}; known: {sorted(defaults)}")
    settings = {**defaults, **flow}
    if settings["weighting_scheme"] not in WEIGHTING_SCHEMES:
        raise InputError(f"model.flow.weighting_scheme={settings['weighting_scheme']!r}: choose one of "
                         f"{WEIGHTING_SCHEMES}")
    if settings["loss_weighting"] not in LOSS_WEIGHTINGS:
        raise InputError(f"model.flow.loss_weighting={settings['loss_weighting']!r}: choose one of {LOSS_WEIGHTINGS}")
    if not float(settings["logit_std"]) > 0:
        raise InputError(f"model.flow.logit_std must be positive, got {settings['logit_std']}")
    for key, default in defaults.items():
        if isinstance(default, bool) and not isinstance(settings[key], bool):
            raise InputError(f"model.flow.{key} must be true or false, got {settings[key]!r}")
    return settings


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's static shift: shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_u(num: int, generator, device, weighting_scheme: str = "logit_normal", logit_mean: float = 0.0,
             logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """u in [0, 1), one per pair, from `generator` (a torch.Generator or a PerSampleGenerator)."""
    if weighting_scheme == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * randn((num,), generator, device))
    uniform = rand(num, generator, device)
    if weighting_scheme == "uniform":
        return uniform
    if weighting_scheme == "mode":
        return 1 - uniform - mode_scale * (torch.cos(math.pi * uniform / 2) ** 2 - 1 + uniform)
    raise InputError(f"unknown model.flow.weighting_scheme {weighting_scheme!r}; choose one of {WEIGHTING_SCHEMES}")


def sigmas_from_table(u: torch.Tensor, scheduler_sigmas: torch.Tensor, scheduler_timesteps: torch.Tensor):
    """(sigmas, timesteps) of the scheduler's training table at index floor(u * N), as the
    diffusers scripts index it (N = number of training timesteps)."""
    n = len(scheduler_timesteps)
    index = (u * n).long().clamp(0, n - 1).to(scheduler_sigmas.device)
    return scheduler_sigmas[index].to(u.device), scheduler_timesteps[index].to(u.device)


def flow_noise_pairs(latents_w: torch.Tensor, latents_l: torch.Tensor | None, sigmas: torch.Tensor,
                     generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, velocity target, sigma per row): chosen rows then rejected rows ([2B, ...]), each
    pair with its own sigma [B] and one noise draw shared by both images; SFT (latents_l None)
    gives the chosen rows only."""
    noise = randn(latents_w.shape, generator, latents_w.device, dtype=latents_w.dtype)
    if latents_l is not None:
        latents = torch.cat([latents_w, latents_l])
        noise, sigmas = torch.cat([noise, noise]), torch.cat([sigmas, sigmas])
    else:
        latents = latents_w
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise, noise - latents, sigmas


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-row weight of the velocity error (see the module docstring)."""
    if scheme == "none":
        return torch.ones_like(sigmas)
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2))
    raise InputError(f"unknown model.flow.loss_weighting {scheme!r}; choose one of {LOSS_WEIGHTINGS}")


def normalise_latents(latents: torch.Tensor, scaling_factor: float, shift_factor: float | None) -> torch.Tensor:
    """VAE latents -> model latents: (x - shift) * scale (SD3 / FLUX.1); shift None = 0."""
    return (latents - (shift_factor or 0.0)) * scaling_factor


@torch.no_grad()
def euler_invert(velocity, latents: torch.Tensor, sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate dx/dsigma = v(x, sigma) with `steps` Euler steps from sigma 0 (x = x_0) up to each
    row's own sigma [N]. `velocity(x, sigma[N]) -> v` is the frozen model's velocity under the
    row's conditioning. Each row takes the grid 0, sigma/steps, ..., sigma of its own sigma."""
    if steps < 1:
        raise InputError(f"method.inversion.steps must be at least 1, got {steps}")
    x = latents
    view = (-1, *([1] * (latents.ndim - 1)))
    for k in range(steps):
        sigma_k = sigmas * (k / steps)
        step = (sigmas / steps).to(x.dtype).view(view)
        x = x + step * velocity(x, sigma_k)
    return x


def implied_targets(latents: torch.Tensor, inverted: torch.Tensor, sigmas: torch.Tensor):
    """(eps*, v*) that put `inverted` exactly on the path from `latents` at each row's sigma:
    eps* = (x_sigma - (1 - sigma) x_0) / sigma, v* = eps* - x_0 = (x_sigma - x_0) / sigma."""
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    eps = (inverted - (1 - s) * latents) / s
    return eps, (inverted - latents) / s
