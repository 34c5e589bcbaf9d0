"""Rectified-flow noising (noising/flow.py) against hand-computed values."""

import math

import pytest
import torch

from t2i_align.errors import InputError
from t2i_align.noising.flow import (euler_invert, flow_noise_pairs, implied_targets, loss_weighting,
                                    normalise_latents, sample_u, shift_sigmas, sigmas_from_table)
from t2i_align.noising.random import PerSampleGenerator


def test_static_shift_matches_hand_values_and_the_sd3_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert shift_sigmas(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == [0.0, 0.75, 1.0]  # 1.5 / 2
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    assert len(scheduler.sigmas) == 1000  # the training table (no trailing 0)
    torch.testing.assert_close(scheduler.sigmas, shift_sigmas(unshifted, 3.0), atol=1e-6, rtol=0)


def test_sigmas_index_the_scheduler_table_as_the_diffusers_scripts():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    u = torch.tensor([0.0, 0.5, 0.9999])
    sigmas, timesteps = sigmas_from_table(u, scheduler.sigmas, scheduler.timesteps)
    assert timesteps.tolist() == [scheduler.timesteps[0].item(), scheduler.timesteps[500].item(),
                                  scheduler.timesteps[999].item()]
    assert sigmas[0].item() == 1.0 and sigmas[1].item() == pytest.approx(0.75, abs=2e-3)  # u 0.5 -> sigma ~0.5 shifted
    torch.testing.assert_close(timesteps, sigmas * 1000)  # SD3 takes sigma * 1000


def test_u_sampling_schemes():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    uniform = sample_u(5, g(), "cpu", "uniform")
    assert torch.equal(uniform, torch.rand(5, generator=g()))
    mode = sample_u(5, g(), "cpu", "mode", mode_scale=1.29)
    torch.testing.assert_close(mode, 1 - uniform - 1.29 * (torch.cos(math.pi * uniform / 2) ** 2 - 1 + uniform))
    assert torch.equal(sample_u(4, g(), "cpu", "logit_normal", logit_mean=0.0, logit_std=0.0), torch.full((4,), 0.5))
    normal = torch.randn(5, generator=g())
    torch.testing.assert_close(sample_u(5, g(), "cpu", "logit_normal", 0.5, 2.0), torch.sigmoid(0.5 + 2.0 * normal))
    # per-sample streams: a pair's draw does not depend on the other pairs of the batch
    both = sample_u(2, PerSampleGenerator([11, 12]), "cpu", "logit_normal")
    alone = sample_u(1, PerSampleGenerator([12]), "cpu", "logit_normal")
    assert both[1] == alone[0]
    with pytest.raises(InputError, match="weighting_scheme 'cosine'"):
        sample_u(1, g(), "cpu", "cosine")


def test_flow_noise_shares_noise_and_sigma_within_a_pair():
    latents_w, latents_l = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), -4.0)
    sigmas = torch.tensor([0.25, 0.5])
    noisy, target, rows = flow_noise_pairs(latents_w, latents_l, sigmas, torch.Generator().manual_seed(0))
    noise = torch.randn((2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert rows.tolist() == [0.25, 0.5, 0.25, 0.5]
    torch.testing.assert_close(noisy[0], 0.75 * 2.0 + 0.25 * noise[0])
    torch.testing.assert_close(noisy[3], 0.5 * -4.0 + 0.5 * noise[1])
    torch.testing.assert_close(target, torch.cat([noise - 2.0, noise + 4.0]))
    chosen_only, _, rows = flow_noise_pairs(latents_w, None, sigmas, torch.Generator().manual_seed(0))
    assert chosen_only.shape == (2, 1, 2, 2) and rows.tolist() == [0.25, 0.5]


def test_loss_weightings_and_latent_normalisation():
    sigmas = torch.tensor([0.5, 0.25])
    assert loss_weighting("none", sigmas).tolist() == [1.0, 1.0]
    assert loss_weighting("sigma_sqrt", sigmas).tolist() == [4.0, 16.0]
    torch.testing.assert_close(loss_weighting("cosmap", sigmas)[0], torch.tensor(4 / math.pi))  # 2 / (pi * 0.5)
    with pytest.raises(InputError, match="loss_weighting 'snr'"):
        loss_weighting("snr", sigmas)
    x = torch.tensor([1.0609])
    torch.testing.assert_close(normalise_latents(x, 1.5305, 0.0609), torch.tensor([1.5305]))
    torch.testing.assert_close(normalise_latents(x, 2.0, None), torch.tensor([2.1218]))


def test_euler_inversion_on_fields_with_known_solutions():
    x0 = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    noise = torch.tensor([[0.5, -0.5], [2.0, 0.0]])
    sigmas = torch.tensor([0.8, 0.3])
    # the straight path's velocity (noise - x0): any step count lands on (1 - s) x0 + s noise,
    # and the implied noise / velocity are exactly the ones that made it
    inverted = euler_invert(lambda x, s: noise - x0, x0, sigmas, steps=3)
    torch.testing.assert_close(inverted, (1 - sigmas[:, None]) * x0 + sigmas[:, None] * noise)
    eps, v = implied_targets(x0, inverted, sigmas)
    torch.testing.assert_close(eps, noise)
    torch.testing.assert_close(v, noise - x0)
    # v(x) = x: Euler gives x0 (1 + s / n)^n (exact solution x0 e^s); s = 1, n = 2 -> 2.25 x0
    out = euler_invert(lambda x, s: x, x0[:1], torch.tensor([1.0]), steps=2)
    torch.testing.assert_close(out, 2.25 * x0[:1])
    # each row's velocity is evaluated at its own sigma grid: 0, s/2 for 2 steps
    seen = []
    euler_invert(lambda x, s: seen.append(s.clone()) or torch.zeros_like(x), x0, sigmas, steps=2)
    torch.testing.assert_close(torch.stack(seen), torch.tensor([[0.0, 0.0], [0.4, 0.15]]))
    with pytest.raises(InputError, match="steps must be at least 1"):
        euler_invert(lambda x, s: x, x0, sigmas, steps=0)


def test_implied_targets_put_any_latent_on_the_path():
    x0, x_s, sigmas = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0.2, 0.5, 0.9])
    eps, v = implied_targets(x0, x_s, sigmas)
    torch.testing.assert_close((1 - sigmas[:, None]) * x0 + sigmas[:, None] * eps, x_s)
    torch.testing.assert_close(v, eps - x0)
