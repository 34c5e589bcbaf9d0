import pytest
import torch
from diffusers import DDPMScheduler

from t2i_align.noising import diffusion_target, forward_noise_pairs


def scheduler(prediction_type):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=prediction_type)


def test_pairs_share_timestep_and_noise_and_match_q_sample():
    sched = scheduler("epsilon")
    gen = torch.Generator().manual_seed(0)
    lat_w, lat_l = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    noisy, target, t = forward_noise_pairs(sched, lat_w, lat_l, gen, "epsilon")
    assert noisy.shape == (6, 4, 8, 8) and t.shape == (6,)
    assert torch.equal(t[:3], t[3:])
    assert torch.equal(target[:3], target[3:])  # epsilon target = shared noise
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    lat = torch.cat([lat_w, lat_l])
    expected = abar.sqrt() * lat + (1 - abar).sqrt() * target
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)


def test_timesteps_are_per_pair():
    gen = torch.Generator().manual_seed(1)
    lat = torch.randn(16, 4, 2, 2)
    _, _, t = forward_noise_pairs(scheduler("epsilon"), lat, lat, gen, "epsilon")
    assert len(set(t[:16].tolist())) > 8
    assert t.min() >= 0 and t.max() <= 999


def test_v_prediction_target_formula():
    sched = scheduler("v_prediction")
    gen = torch.Generator().manual_seed(2)
    lat_w, lat_l = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    noisy, target, t = forward_noise_pairs(sched, lat_w, lat_l, gen, "v_prediction")
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    lat = torch.cat([lat_w, lat_l])
    noise = (noisy - abar.sqrt() * lat) / (1 - abar).sqrt()
    torch.testing.assert_close(target, abar.sqrt() * noise - (1 - abar).sqrt() * lat,
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(target[:2], target[2:])  # v depends on x_0


def test_sft_noises_only_the_chosen_images():
    gen = torch.Generator().manual_seed(3)
    noisy, target, t = forward_noise_pairs(scheduler("epsilon"), torch.randn(2, 4, 4, 4), None,
                                           gen, "epsilon")
    assert noisy.shape == (2, 4, 4, 4) and t.shape == (2,)


def test_same_generator_state_gives_same_draws():
    lat = torch.randn(2, 4, 4, 4)
    a = forward_noise_pairs(scheduler("epsilon"), lat, lat, torch.Generator().manual_seed(5), "epsilon")
    b = forward_noise_pairs(scheduler("epsilon"), lat, lat, torch.Generator().manual_seed(5), "epsilon")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_unknown_prediction_type_is_named():
    with pytest.raises(ValueError, match="sample"):
        diffusion_target(scheduler("epsilon"), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long), "sample")
