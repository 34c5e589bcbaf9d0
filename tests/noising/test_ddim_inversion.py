"""DDIM inversion for InPO: grid, exactness, per-sample timesteps, batching, v-prediction, eta.

Tolerances. DDIM inversion is exact only for a model whose epsilon does not depend on x (a
constant eps): then every level is exactly sqrt(abar) x_0 + sqrt(1 - abar) eps, checked to 1e-5.
For any other model the inversion step uses eps(x_s, p) where the matching denoising step uses
eps(x_p, p), so invert-then-denoise has a first-order discretisation error, which halves when the
number of steps doubles (checked with the analytic Gaussian-data denoiser). Measured relative L2
error of the reconstructed x_0 after 50 steps to t = 200 / 400: tiny SD 1.5 UNet about 0.4%, tiny
SD 2.1 (v) UNet about 0.3%, analytic denoiser 0.3% / 1.0% (it depends strongly on x). The tests
allow 2%. Ending one 10-step grid point away from t (the released code's defect) shows up in the
exact constant-eps test, where the neighbouring levels differ by far more than 1e-2.
"""

import pytest
import torch
from diffusers import DDPMScheduler

from t2i_align.noising.ddim_inversion import (
    ddim_invert,
    implied_noise,
    inversion_grid,
    inversion_noise_pairs,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny UNets are ~15 ms a call on one thread; with two intra-op threads on a busy 2-core
    machine a call sometimes took ~2 s (barrier waits), so this module runs single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def scheduler(prediction_type="epsilon"):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=prediction_type)


def col(v):
    return v.view(-1, 1, 1, 1)


def constant_eps_fn(eps, prediction_type, sched):
    """A model whose epsilon is always ``eps`` (per sample), in the requested parameterisation."""
    abar = sched.alphas_cumprod

    def fn(x, t):
        if prediction_type == "epsilon":
            return eps.clone()
        a = col(abar[t])
        return (eps - (1 - a).sqrt() * x) / a.sqrt()  # the v for which sqrt(a) v + sqrt(1-a) x == eps

    return fn


def gaussian_denoiser(sched, sigma_data=0.5, prediction_type="epsilon"):
    """The exact E[eps | x_t] for data x_0 ~ N(0, sigma_data^2 I): sqrt(1-a) x / (a s^2 + 1 - a)."""
    abar = sched.alphas_cumprod

    def fn(x, t):
        a = col(abar[t])
        eps = (1 - a).sqrt() * x / (a * sigma_data**2 + 1 - a)
        if prediction_type == "epsilon":
            return eps
        return (eps - (1 - a).sqrt() * x) / a.sqrt()

    return fn


def ddim_denoise(predict_fn, x_t, timesteps, sched, prediction_type, num_steps):
    """Plain DDIM (eta = 0) back along the same per-sample grid, ending at the clean level (abar = 1)."""
    abar = sched.alphas_cumprod
    grid = inversion_grid(timesteps, num_steps)
    x = x_t.clone()
    with torch.no_grad():
        for k in range(num_steps, 0, -1):
            a_p = col(abar[grid[:, k]])
            a_s = col(abar[grid[:, k - 1]]) if k > 1 else torch.ones_like(a_p)
            out = predict_fn(x, grid[:, k])
            eps = out if prediction_type == "epsilon" else a_p.sqrt() * out + (1 - a_p).sqrt() * x
            x_new = a_s.sqrt() * (x - (1 - a_p).sqrt() * eps) / a_p.sqrt() + (1 - a_s).sqrt() * eps
            moved = (grid[:, k] != grid[:, k - 1]) | (k == 1)
            x = torch.where(col(moved), x_new, x)
    return x


def rel_err(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


# ----------------------------------------------------------------------------- grid


def test_inversion_grid_ends_exactly_at_each_t_and_is_monotone():
    t = torch.tensor([0, 1, 5, 37, 400, 901, 999])
    grid = inversion_grid(t, 10)
    assert grid.shape == (7, 11) and grid.dtype == torch.long
    assert torch.equal(grid[:, -1], t)
    assert torch.equal(grid[:, 0], torch.zeros(7, dtype=torch.long))
    assert (grid.diff(dim=1) >= 0).all()
    ideal = t[:, None].double() * torch.arange(11).double() / 10
    assert ((grid.double() - ideal).abs() <= 0.5).all()  # rounded
    assert torch.equal(grid[4], torch.arange(0, 401, 40))
    assert torch.equal(inversion_grid(t, 1), torch.stack([torch.zeros_like(t), t], dim=1))
    assert torch.equal(inversion_grid(torch.tensor([0]), 4), torch.zeros(1, 5, dtype=torch.long))


def test_inversion_grid_rejects_bad_input():
    with pytest.raises(ValueError):
        inversion_grid(torch.tensor([3]), 0)
    with pytest.raises(ValueError):
        inversion_grid(torch.tensor([[3]]), 5)
    with pytest.raises(ValueError):
        inversion_grid(torch.tensor([-1]), 5)
    with pytest.raises(ValueError):
        inversion_grid(torch.tensor([3.0]), 5)


# ----------------------------------------------------------------------------- exactness / landing at t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_constant_eps_inverts_exactly_to_each_samples_own_t(prediction_type):
    sched = scheduler(prediction_type)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([10, 400, 900, 0, 999])
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    x_inv = ddim_invert(constant_eps_fn(eps, prediction_type, sched), x0, t, sched, prediction_type)
    a = col(sched.alphas_cumprod[t])
    torch.testing.assert_close(x_inv, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=0, atol=1e-5)
    torch.testing.assert_close(implied_noise(x_inv, x0, t, sched), eps, rtol=0, atol=1e-4)
    # scored at the right t: the latent is NOT at the neighbouring levels of the 10-step grid
    for wrong in (t[:3] - 40, t[:3] + 40):
        a_wrong = col(sched.alphas_cumprod[wrong])
        assert (x_inv[:3] - (a_wrong.sqrt() * x0[:3] + (1 - a_wrong).sqrt() * eps[:3])).abs().max() > 1e-2


def test_v_model_of_an_eps_model_inverts_like_the_eps_model():
    g = torch.Generator().manual_seed(1)
    x0, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([3, 250, 777])
    sched = scheduler()
    eps_inv = ddim_invert(gaussian_denoiser(sched), x0, t, sched, "epsilon", num_steps=7)
    v_inv = ddim_invert(gaussian_denoiser(sched, prediction_type="v_prediction"), x0, t, sched,
                        "v_prediction", num_steps=7)
    torch.testing.assert_close(v_inv, eps_inv, rtol=0, atol=1e-5)


def test_t0_takes_one_real_step_and_repeated_grid_points_are_the_identity():
    """t = 0 (grid all zeros): clean -> level 0 with the first model output, then zero-length steps
    that must not move the latent whatever the model returns."""
    sched = scheduler()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 4, 4, generator=g)
    outputs = []

    def noisy_model(x, t):
        outputs.append(torch.randn(x.shape, generator=g) * 10)
        return outputs[-1]

    t = torch.tensor([0, 3])
    x_inv = ddim_invert(noisy_model, x0, t, sched, "epsilon", num_steps=10)
    assert len(outputs) == 10
    a0 = sched.alphas_cumprod[0]
    torch.testing.assert_close(x_inv[0], a0.sqrt() * x0[0] + (1 - a0).sqrt() * outputs[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(implied_noise(x_inv, x0, t, sched)[0], outputs[0][0], rtol=0, atol=1e-3)
    # t = 3 on a 10-step grid visits 0, 0, 1, 1, 1, 2, 2, 2, 3: only the real moves count
    assert inversion_grid(torch.tensor([3]), 10).unique().tolist() == [0, 1, 2, 3]
    assert torch.isfinite(x_inv).all()


def test_analytic_model_invert_then_denoise_returns_x0_with_first_order_error():
    g = torch.Generator().manual_seed(3)
    x0 = 0.5 * torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([200, 400])
    for prediction_type in ("epsilon", "v_prediction"):
        sched = scheduler(prediction_type)
        fn = gaussian_denoiser(sched, prediction_type=prediction_type)
        errors = {}
        for steps in (50, 100):
            x_inv = ddim_invert(fn, x0, t, sched, prediction_type, num_steps=steps)
            back = ddim_denoise(fn, x_inv, t, sched, prediction_type, num_steps=steps)
            errors[steps] = torch.tensor([rel_err(back[i], x0[i]) for i in range(2)])
            assert rel_err(x_inv, x0) > 0.3  # it did move
        assert (errors[50] < 0.02).all()
        ratio = errors[100] / errors[50]  # discretisation error, not a wrong level: halves with 2x steps
        assert ((ratio > 0.4) & (ratio < 0.6)).all(), ratio


def test_result_has_no_grad_and_keeps_dtype():
    sched = scheduler()
    lin = torch.nn.Linear(4, 4)

    def fn(x, t):
        return lin(x.movedim(1, -1)).movedim(-1, 1)

    x0 = torch.randn(2, 4, 4, 4, requires_grad=True)
    x_inv = ddim_invert(fn, x0, torch.tensor([5, 50]), sched, "epsilon", num_steps=3)
    assert not x_inv.requires_grad
    bf = ddim_invert(lambda x, t: torch.zeros_like(x), x0.detach().bfloat16(), torch.tensor([5, 50]), sched,
                     "epsilon", num_steps=3)
    assert bf.dtype == torch.bfloat16


def test_rejects_bad_arguments():
    sched, x0 = scheduler(), torch.randn(2, 4, 4, 4)
    fn = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError):
        ddim_invert(fn, x0, torch.tensor([1, 2]), sched, "sample")
    with pytest.raises(ValueError):
        ddim_invert(fn, x0, torch.tensor([1, 2, 3]), sched, "epsilon")
    with pytest.raises(ValueError):
        ddim_invert(fn, x0, torch.tensor([1, 1000]), sched, "epsilon")
    with pytest.raises(ValueError):
        ddim_invert(fn, x0, torch.tensor([1, 2]), sched, "epsilon", eta=-0.1)


# ----------------------------------------------------------------------------- eta


def test_eta_changes_the_result_and_is_reproducible():
    sched = scheduler()
    g = torch.Generator().manual_seed(4)
    x0, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 300, 950])
    fn = gaussian_denoiser(sched)
    det = ddim_invert(fn, x0, t, sched, "epsilon", num_steps=10)
    a = ddim_invert(fn, x0, t, sched, "epsilon", num_steps=10, eta=0.1, generator=torch.Generator().manual_seed(7))
    b = ddim_invert(fn, x0, t, sched, "epsilon", num_steps=10, eta=0.1, generator=torch.Generator().manual_seed(7))
    c = ddim_invert(fn, x0, t, sched, "epsilon", num_steps=10, eta=0.1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a[1:], c[1:])
    assert (a[1:] - det[1:]).abs().max() > 1e-3
    # small: eta * sigma_DDIM per step
    assert (a[1:] - det[1:]).norm() / det[1:].norm() < 0.2
    # t = 0: the only real step starts from the clean latent (sigma = 0), the rest are zero-length
    torch.testing.assert_close(a[0], det[0], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- pairs


def test_inversion_noise_pairs_convention_and_identities():
    sched = scheduler()
    g = torch.Generator().manual_seed(5)
    lat_w, lat_l = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    fn = gaussian_denoiser(sched)
    calls = []

    def counting(x, t):
        calls.append(x.shape[0])
        return fn(x, t)

    noisy, target, t = inversion_noise_pairs(sched, lat_w, lat_l, counting, torch.Generator().manual_seed(0),
                                             "epsilon", num_steps=6)
    assert calls == [6] * 6  # one batched call per step, w and l together
    assert noisy.shape == (6, 4, 8, 8) and target.shape == (6, 4, 8, 8) and t.shape == (6,)
    expected_t = torch.randint(0, 1000, (3,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, torch.cat([expected_t, expected_t]))  # per pair, shared by w and l
    lat = torch.cat([lat_w, lat_l])
    torch.testing.assert_close(target, implied_noise(noisy, lat, t, sched), rtol=0, atol=1e-4)
    torch.testing.assert_close(sched.add_noise(lat, target, t), noisy, rtol=0, atol=1e-5)
    assert not torch.allclose(target[:3], target[3:])  # w and l no longer share noise
    # chosen first: the first half is the inversion of the chosen latents alone
    torch.testing.assert_close(noisy[:3], ddim_invert(fn, lat_w, t[:3], sched, "epsilon", num_steps=6),
                               rtol=0, atol=1e-5)
    noisy_sft, _, t_sft = inversion_noise_pairs(sched, lat_w, None, fn, torch.Generator().manual_seed(0),
                                                "epsilon", num_steps=6)
    assert noisy_sft.shape == (3, 4, 8, 8) and torch.equal(t_sft, expected_t)


# ----------------------------------------------------------------------------- tiny real UNets


def _unet_fn(parts, batch, seed):
    unet = parts.unet.eval()
    cond = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(seed))

    def fn(x, t, cond=cond):
        return unet(x, t, encoder_hidden_states=cond[: x.shape[0]]).sample

    return unet, cond, fn


@pytest.fixture(scope="module")
def sd15(t2i_cache):
    from t2i_align.models.loading import load_parts

    return load_parts("tiny:sd15")


@pytest.fixture(scope="module")
def sd21(t2i_cache):
    from t2i_align.models.loading import load_parts

    return load_parts("tiny:sd21")


@pytest.mark.parametrize("kind", ["sd15", "sd21"])
def test_tiny_unet_invert_then_denoise_returns_x0(kind, request):
    parts = request.getfixturevalue(kind)
    assert parts.prediction_type == {"sd15": "epsilon", "sd21": "v_prediction"}[kind]
    sched, size = parts.noise_scheduler, parts.unet.config.sample_size
    _, _, fn = _unet_fn(parts, 2, seed=0)
    x0 = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([200, 400])
    x_inv = ddim_invert(fn, x0, t, sched, parts.prediction_type, num_steps=50)
    back = ddim_denoise(fn, x_inv, t, sched, parts.prediction_type, num_steps=50)
    assert rel_err(back, x0) < 0.02
    assert rel_err(x_inv, x0) > 0.1


def test_tiny_unet_batched_equals_one_by_one(sd15):
    """t = (10, 400, 900) in one batch gives the same latents as three single-sample inversions."""
    sched, size = sd15.noise_scheduler, sd15.unet.config.sample_size
    unet, cond, fn = _unet_fn(sd15, 3, seed=2)
    x0 = torch.randn(3, 4, size, size, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 400, 900])
    batched = ddim_invert(fn, x0, t, sched, "epsilon", num_steps=5)
    for i in range(3):
        single = ddim_invert(lambda x, tt, c=cond[i : i + 1]: unet(x, tt, encoder_hidden_states=c).sample,
                             x0[i : i + 1], t[i : i + 1], sched, "epsilon", num_steps=5)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=1e-5)


def test_tiny_v_unet_pairs_targets_are_velocities(sd21):
    sched, size = sd21.noise_scheduler, sd21.unet.config.sample_size
    _, _, fn = _unet_fn(sd21, 4, seed=4)
    g = torch.Generator().manual_seed(5)
    lat_w, lat_l = torch.randn(2, 4, size, size, generator=g), torch.randn(2, 4, size, size, generator=g)
    noisy, target, t = inversion_noise_pairs(sched, lat_w, lat_l, fn, torch.Generator().manual_seed(6),
                                             "v_prediction", num_steps=4)
    lat = torch.cat([lat_w, lat_l])
    eps_hat = implied_noise(noisy, lat, t, sched)
    a = col(sched.alphas_cumprod[t])
    torch.testing.assert_close(eps_hat, (noisy - a.sqrt() * lat) / (1 - a).sqrt(), rtol=0, atol=1e-5)
    torch.testing.assert_close(sched.add_noise(lat, eps_hat, t), noisy, rtol=0, atol=1e-5)
    torch.testing.assert_close(target, sched.get_velocity(lat, eps_hat, t), rtol=0, atol=1e-5)
    assert torch.equal(t[:2], t[2:])


# ----------------------------------------------------------------------------- evaluation level


@pytest.mark.parametrize("evaluate_at", ["destination", "source"])
def test_model_is_evaluated_at_the_chosen_level(evaluate_at):
    """destination: step k calls the model at grid[:, k]; source (the released code's convention
    under diffusers 0.20.0): at grid[:, k-1], i.e. timestep 0 on the clean latent first."""
    sched = scheduler()
    t = torch.tensor([0, 7, 350, 999])
    grid = inversion_grid(t, 5)
    seen = []

    def model(x, tt):
        seen.append(tt.clone())
        return torch.zeros_like(x)

    ddim_invert(model, torch.randn(4, 4, 2, 2), t, sched, "epsilon", num_steps=5, evaluate_at=evaluate_at)
    expected = [grid[:, k] if evaluate_at == "destination" else grid[:, k - 1] for k in range(1, 6)]
    assert len(seen) == 5
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)


def test_one_source_step_by_hand():
    """One step to t = 100 from x_0: x = sqrt(abar_100) x_0 + sqrt(1 - abar_100) eps(x_0, tau) with
    tau = 0 (source) or 100 (destination); the model here returns tau + 1 everywhere."""
    sched = scheduler()
    x0 = torch.full((1, 1, 1, 1), 0.5)
    t = torch.tensor([100])

    def model(x, tt):
        return (tt.float() + 1).view(-1, 1, 1, 1).expand_as(x)

    a = sched.alphas_cumprod[100].item()
    for evaluate_at, eps in [("source", 1.0), ("destination", 101.0)]:
        x = ddim_invert(model, x0, t, sched, "epsilon", num_steps=1, evaluate_at=evaluate_at)
        assert x.item() == pytest.approx(a ** 0.5 * 0.5 + (1 - a) ** 0.5 * eps, rel=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_constant_eps_inverts_exactly_at_the_source_level_too(prediction_type):
    """The v output is converted to epsilon at the timestep it was evaluated at, so a constant eps
    is still inverted exactly (and v-prediction equals epsilon) under the source convention."""
    sched = scheduler(prediction_type)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([5, 420, 999])
    x = ddim_invert(constant_eps_fn(eps, prediction_type, sched), x0, t, sched, prediction_type,
                    num_steps=10, evaluate_at="source")
    a = col(sched.alphas_cumprod[t])
    torch.testing.assert_close(x, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=0, atol=1e-5)


def test_source_and_destination_differ_for_a_real_model_and_unknown_level_is_refused():
    sched = scheduler()
    g = torch.Generator().manual_seed(6)
    x0, t = 0.5 * torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 800])
    dst = ddim_invert(gaussian_denoiser(sched), x0, t, sched, "epsilon", num_steps=10)
    src = ddim_invert(gaussian_denoiser(sched), x0, t, sched, "epsilon", num_steps=10, evaluate_at="source")
    assert rel_err(src, dst) > 1e-3
    with pytest.raises(ValueError, match="evaluate_at"):
        ddim_invert(gaussian_denoiser(sched), x0, t, sched, "epsilon", evaluate_at="middle")
