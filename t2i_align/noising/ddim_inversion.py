"""DDIM-inversion noising for InPO (DDIM-InPO; Lu et al., "InPO: Inversion Preference Optimization
with Reparametrized DDIM for Efficient Diffusion Model Alignment", CVPR 2025, arXiv 2503.18454).

InPO keeps the Diffusion-DPO loss, but each image's x_t comes from deterministic DDIM inversion of
its own clean latent x_0 (no grad), and the regression target is the noise that the inverted latent
implies under the forward marginal q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I):

    eps_hat = (x_inv - sqrt(abar_t) x_0) / sqrt(1 - abar_t)            (so add_noise(x_0, eps_hat, t) == x_inv)

Chosen and rejected images therefore no longer share the noise; a pair still shares t.

DDIM inversion step (Song et al. 2021, DDIM eq. 12 with sigma = 0, run from a lower noise level s to a
higher one p):

    x0_pred = (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s)
    x_p     = sqrt(abar_p) x0_pred + sqrt(1 - abar_p) eps,     eps = eps_theta(x_s, tau)

Where the model is evaluated (``evaluate_at``) is a convention, both approximating the ODE:

* ``"destination"`` (default): tau = p, on the current latent x_s (eps_theta(x_p, p) ~ eps_theta(x_s, p);
  current diffusers ``DDIMInverseScheduler``, prompt-to-prompt / null-text inversion). The last
  evaluation is at exactly t.
* ``"source"``: tau = s, the level the latent is at, which is what the released InPO code does
  under the diffusers version it pins (below). The first step evaluates at timestep 0 on x_0.

A constant eps is inverted exactly under either: x_p = sqrt(abar_p) x_0 + sqrt(1 - abar_p) eps.

What the released code does (github.com/JaydenLyh/InPO, train.py, the ``with torch.no_grad():``
block after the text encoding; read at commit a9cfc4de), read against the diffusers it pins
(requirements.txt: ``diffusers==0.20.0``):

* Scheduler: ``DDIMInverseScheduler.from_pretrained(model, subfolder="scheduler")``, ``set_timesteps(10)``.
  In 0.20.0 set_timesteps builds the leading grid [1, 101, ..., 901] and rolls it by one, giving
  [-99, 1, 101, ..., 801]; ``step(out, g, x)`` goes from level g to level g + 100 (level -99 is the
  start, ``initial_alpha_cumprod`` = alphas_cumprod[0] for the SD configs' set_alpha_to_one=False).
* Steps: ``times = timesteps[timesteps < t]`` (t = the first pair's timestep), and for each g:
  ``noise_pred = unet(x, g, ...)`` then ``x = step(noise_pred, g, x)``: the UNet is evaluated at the
  SOURCE level g of each step (at g = -99 for the first one, a timestep outside the trained range).
  So the latent ends on the smallest grid level >= t (levels 1, 101, ..., 901): t = 350 -> 401,
  t = 101 -> 101, t <= 1 -> one step to level 1; for t > 901 it ends at 901, below t.
* Model and conditioning: the *trainable* ``unet`` (policy, train mode, under no_grad), conditioned
  on the same text embedding as the loss pass: the prompt, or the empty prompt for the 20% of captions
  dropped by ``proportion_empty_prompts``, repeated for w and l (``.repeat(2, 1, 1)``); SDXL also with
  the same pooled embedding and fixed add_time_ids (res, res, 0, 0, res, res). No classifier-free
  guidance. Only epsilon models (``assert prediction_type == "epsilon"``).
* eta: ``inversion_eta = 0.1`` hard-coded. After each step it adds
  ``inversion_eta * randn * noise_scheduler._get_variance(g + 1000 // 10, g) ** 0.5`` where
  ``_get_variance(s, p) = (1 - abar_p) / (1 - abar_s) * (1 - abar_s / abar_p)`` is DDIM's sigma^2 at
  eta = 1 (DDIM eq. 16): under 0.20.0's g -> g + 100 step, the interval just stepped.
* Target: ``noise = (x_inv - sqrt(abar[timesteps[0]]) x_0) / sqrt(1 - abar[timesteps[0]])``, and the
  UNets are scored at ``timesteps``.

(Run under a current diffusers, >= 0.22 after huggingface/diffusers#5145, the same loop behaves
differently: the grid is no longer rolled, ``step`` maps g - 100 to g, the latent ends BELOW t, and
t > 901 indexes alphas_cumprod[1001] in the eta term. That is not the released behaviour and is not
described as such here.)

Defects of the release, and what we do instead:

1. Wrong level: the latent sits on a grid point other than t (t = 350 -> 401, t = 0 -> 1) but is scored,
   and eps_hat computed, at t. Here the per-sample grid ends exactly at t.
2. One t per batch: the grid and abar come from ``timesteps[0]``, so with more than one pair per
   device batch every other pair is inverted to the first pair's t. Here grids are per sample and all
   samples go through ONE batched model call per step.
3. The first step evaluates the UNet at timestep -99. Here the start is the clean latent at abar = 1
   (the x_0 of q(x_t | x_0), DDIM's alpha_0 = 1), and under ``evaluate_at="source"`` the first
   evaluation is at timestep 0.
4. v-prediction (SD 2.1-768) is refused by the release. Here the model output v is turned into an
   epsilon model at the timestep it was evaluated at, eps = sqrt(abar_tau) v + sqrt(1 - abar_tau) x
   (Salimans & Ho 2022), and the target is ``get_velocity(x_0, eps_hat, t)``.

Which model inverts (``method.inversion.model``, chosen in the training step, not here): the release
inverts with the trainable policy. Then x_t = Inv_theta(x_0) depends on theta while the gradient
ignores it, and DPO's derivation (an expectation over an x_t distribution that does not depend on
theta) no longer holds: in our toy world the policy "won" by corrupting its own inversions of the
rejected images (the reference's error on them grew 18x, the neon rate stayed at 0.00 and colour fell
0.97 -> 0.81), while inverting with the frozen reference learned (0.01 -> 0.83-0.88). The frozen
reference is therefore the default; ``policy`` reproduces the release. At step 0 the two coincide.

eta > 0 matches the released formula: after the deterministic step s -> p, add
``eta * sigma_{p->s} * z`` with sigma^2 = (1 - abar_s) / (1 - abar_p) * (1 - abar_p / abar_s), the
sigma of the interval just stepped. It is 0 on the first step (abar_s = 1) and on zero-length steps.
z is drawn from ``generator`` (or the global RNG).
"""

from __future__ import annotations

from typing import Callable

import torch

from t2i_align.noising.forward import diffusion_target, sample_pair_timesteps
from t2i_align.noising.random import randn
from t2i_align.errors import InputError

PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PREDICTION_TYPES = ("epsilon", "v_prediction")
EVALUATE_AT = ("destination", "source")


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in _PREDICTION_TYPES:
        raise InputError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, 1, ...] broadcasting against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _alphas_cumprod(noise_scheduler, device) -> torch.Tensor:
    # float32, as DDPMScheduler.add_noise / get_velocity use it (float64 is not available on every device)
    return noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def inversion_grid(timesteps: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Per-sample inversion grid: ``grid[i, k] = round(t_i * k / num_steps)``, k = 0..num_steps.

    Returns a long tensor [N, num_steps + 1] on ``timesteps``' device. Each row is monotone
    non-decreasing, starts at 0 (column 0 marks the start: ``ddim_invert`` takes the clean latent,
    abar = 1, as the level of column 0) and ends exactly at t_i. Rounding is half-up in integer
    arithmetic, so the last column is exact. For t_i < num_steps points repeat; a repeated point is a
    zero-length (identity) step.
    """
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1, got {num_steps}")
    if timesteps.dim() != 1:
        raise InputError(f"timesteps must be 1-D [N], got shape {tuple(timesteps.shape)}")
    if timesteps.is_floating_point() or timesteps.is_complex():
        raise InputError(f"timesteps must be integers, got {timesteps.dtype}")
    t = timesteps.long()
    if t.numel() and int(t.min()) < 0:
        raise InputError(f"timesteps must be >= 0, got {int(t.min())}")
    k = torch.arange(num_steps + 1, device=t.device, dtype=torch.long)
    # round(t * k / K) = floor((2 t k + K) / (2 K)), exact in integers; k = K gives t.
    return torch.div(2 * t[:, None] * k[None, :] + num_steps, 2 * num_steps, rounding_mode="floor")


def _to_epsilon(model_output: torch.Tensor, x: torch.Tensor, abar_tau: torch.Tensor,
                prediction_type: str) -> torch.Tensor:
    """The epsilon prediction of a model evaluated on x at a timestep with abar_tau ([N, 1, ...])."""
    if prediction_type == "epsilon":
        return model_output
    # v = sqrt(abar) eps - sqrt(1 - abar) x_0 and x = sqrt(abar) x_0 + sqrt(1 - abar) eps
    #   =>  eps = sqrt(abar) v + sqrt(1 - abar) x   (x_0 = sqrt(abar) x - sqrt(1 - abar) v)
    return abar_tau.sqrt() * model_output + (1 - abar_tau).sqrt() * x


def _invert_float32(predict_fn: PredictFn, latents: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
                    prediction_type: str, num_steps: int, eta: float,
                    generator: torch.Generator | None, evaluate_at: str = "destination") -> torch.Tensor:
    """DDIM inversion returning the float32 inverted latent (see ``ddim_invert``)."""
    _check_prediction_type(prediction_type)
    if evaluate_at not in EVALUATE_AT:
        raise InputError(f"unknown inversion evaluate_at {evaluate_at!r}; choose one of {EVALUATE_AT}")
    if eta < 0:
        raise InputError(f"eta must be >= 0, got {eta}")
    if timesteps.shape != (latents.shape[0],):
        raise InputError(f"timesteps must have shape [{latents.shape[0]}] (one per latent), "
                         f"got {tuple(timesteps.shape)}")
    num_train = noise_scheduler.config.num_train_timesteps
    if timesteps.numel() and int(timesteps.max()) >= num_train:
        raise InputError(f"timesteps must be < num_train_timesteps={num_train}, got {int(timesteps.max())}")

    device = latents.device
    grid = inversion_grid(timesteps.to(device), num_steps)
    abar = _alphas_cumprod(noise_scheduler, device)
    x = latents.detach().float().clone()
    # The start is the clean latent, at abar = 1: the first step's x0_pred is x_0 itself.
    abar_src = torch.ones(x.shape[0], device=device, dtype=torch.float32)
    for k in range(1, num_steps + 1):
        t_dst = grid[:, k]
        a_src, a_dst = _per_sample(abar_src, x), _per_sample(abar[t_dst], x)
        t_eval = t_dst if evaluate_at == "destination" else grid[:, k - 1]  # source: the level x is at
        out = predict_fn(x.to(latents.dtype), t_eval).float()
        eps = _to_epsilon(out, x, _per_sample(abar[t_eval], x), prediction_type)
        x0_pred = (x - (1 - a_src).sqrt() * eps) / a_src.sqrt()
        x_new = a_dst.sqrt() * x0_pred + (1 - a_dst).sqrt() * eps
        if eta > 0:
            # DDIM sigma (eta = 1) of the interval just stepped, s -> p (DDIM eq. 16), as the released code
            var = (1 - a_src) / (1 - a_dst) * (1 - a_dst / a_src)
            noise = randn(x.shape, generator, device)
            x_new = x_new + eta * var.clamp(min=0).sqrt() * noise
        moved = torch.ones_like(t_dst, dtype=torch.bool) if k == 1 else t_dst != grid[:, k - 1]
        x = torch.where(_per_sample(moved, x), x_new, x)  # zero-length steps are the identity
        abar_src = torch.where(moved, abar[t_dst], abar_src)
    return x


@torch.no_grad()
def ddim_invert(predict_fn: PredictFn, latents: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
                prediction_type: str, num_steps: int = 10, eta: float = 0.0,
                generator: torch.Generator | None = None, evaluate_at: str = "destination") -> torch.Tensor:
    """DDIM-invert clean latents x_0 [N, C, H, W] to each sample's own timestep t_i (no grad).

    predict_fn(x, t) returns the model output (epsilon or v, per ``prediction_type``) for a batch x
    [N, ...] at per-sample timesteps t (long [N]); conditioning is bound by the caller. It is called
    exactly ``num_steps`` times, each on the whole batch, with x in ``latents``' dtype. Step k goes from
    level ``grid[:, k-1]`` (the clean latent, abar = 1, for k = 1) to ``grid[:, k]`` with
    ``grid = inversion_grid(timesteps, num_steps)``, evaluating the model at the destination
    timestep ``grid[:, k]`` (``evaluate_at="destination"``) or at the source ``grid[:, k-1]``
    (``"source"``, the released InPO code's convention; timestep 0 for the first step). The
    arithmetic is float32; the result has ``latents``' dtype.

    eta = 0 is deterministic DDIM inversion; eta > 0 adds eta * sigma_DDIM * z after each step as the
    released InPO code does (module docstring). v-prediction outputs are converted to epsilon with
    alphas_cumprod at the evaluated timestep.
    """
    x = _invert_float32(predict_fn, latents, timesteps, noise_scheduler, prediction_type, num_steps, eta,
                        generator, evaluate_at)
    return x.to(latents.dtype)


def implied_noise(x_t: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor,
                  noise_scheduler) -> torch.Tensor:
    """eps_hat = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), per sample (float32 arithmetic, x_t's dtype)."""
    abar = _per_sample(_alphas_cumprod(noise_scheduler, x_t.device)[timesteps.to(x_t.device)], x_t)
    eps = (x_t.float() - abar.sqrt() * latents.float()) / (1 - abar).sqrt()
    return eps.to(x_t.dtype)


def inversion_noise_pairs(noise_scheduler, latents_w: torch.Tensor, latents_l: torch.Tensor | None,
                          predict_fn: PredictFn, generator: torch.Generator, prediction_type: str,
                          num_steps: int = 10, eta: float = 0.0, evaluate_at: str = "destination"):
    """InPO noising of preference pairs, with ``forward.forward_noise_pairs``' return convention.

    t ~ U{0, ..., T-1} is drawn once per pair with ``generator`` and shared by w and l; then
    x_inv = DDIM inversion of cat([latents_w, latents_l]) to those t (one batched ``predict_fn``
    call per step, so predict_fn sees [2B] latents, chosen first), eps_hat = implied noise of each
    image, target = eps_hat (epsilon) or get_velocity(x_0, eps_hat, t) (v_prediction). The eta noise,
    if any, is drawn from ``generator`` after t. ``evaluate_at``: see ``ddim_invert``.

    Returns (noisy [2B], target [2B], timesteps [2B]), chosen first; with latents_l None only the
    chosen images ([B]). ``noise_scheduler.add_noise(x_0, eps_hat, t)`` reproduces ``noisy``.
    """
    _check_prediction_type(prediction_type)
    num_pairs = latents_w.shape[0]
    timesteps = sample_pair_timesteps(num_pairs, noise_scheduler.config.num_train_timesteps, generator,
                                      latents_w.device)
    if latents_l is not None:
        latents = torch.cat([latents_w, latents_l])
        timesteps = torch.cat([timesteps, timesteps])
    else:
        latents = latents_w
    with torch.no_grad():
        x_inv = _invert_float32(predict_fn, latents, timesteps, noise_scheduler, prediction_type, num_steps,
                                eta, generator, evaluate_at)
        eps_hat = implied_noise(x_inv, latents, timesteps, noise_scheduler)  # float32, before any down-cast
        target = diffusion_target(noise_scheduler, latents.float(), eps_hat, timesteps, prediction_type)
    return x_inv.to(latents.dtype), target.to(latents.dtype), timesteps
