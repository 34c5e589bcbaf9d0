"""Objective values against hand-computed numbers."""

import math

import pytest
import torch

from t2i_align.objectives import compute_objective, get_objective
from t2i_align.objectives.dpo import dpo_loss
from t2i_align.objectives.mapo import mapo_loss, odds_transform
from t2i_align.objectives.sft import sft_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_is_ln2_when_policy_equals_reference():
    err_w, err_l = t(0.3, 0.1, 0.7), t(0.2, 0.4, 0.7)
    loss, metrics = dpo_loss(err_w, err_l, err_w.clone(), err_l.clone(), beta=5000)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)


def test_dpo_hand_computed_values():
    # beta 100: inside = -50 * ((E_w - E_l) - (R_w - R_l))
    # pair 1: E_w-E_l = -0.02, ref diff 0 -> inside = +1 -> -logsigmoid(1) = ln(1 + e^-1)
    # pair 2: E_w-E_l = +0.02 -> inside = -1 -> ln(1 + e)
    loss, metrics = dpo_loss(t(0.10, 0.12), t(0.12, 0.10), t(0.11, 0.11), t(0.11, 0.11), beta=100)
    expected = 0.5 * (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)))
    assert loss.item() == pytest.approx(expected, abs=1e-9)  # 0.813262
    assert loss.item() == pytest.approx(0.8132616875, abs=1e-9)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)
    assert metrics["model_mse"].item() == pytest.approx(0.11)


def test_dpo_mean_is_outside_logsigmoid():
    # with the mean inside logsigmoid the two pairs would cancel to ln 2
    loss, _ = dpo_loss(t(0.10, 0.12), t(0.12, 0.10), t(0.11, 0.11), t(0.11, 0.11), beta=100)
    assert abs(loss.item() - math.log(2)) > 0.1


def test_dpo_reference_shifts_the_margin():
    # the reference already prefers w by the same amount: no preference signal left
    loss, metrics = dpo_loss(t(0.10), t(0.12), t(0.20), t(0.22), beta=100)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-9)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)


def test_mapo_check_values_from_reference():
    loss, metrics = mapo_loss(t(0.10), t(0.12), beta=0.1, snr_value=0.5, num_train_timesteps=1000)
    assert metrics["log_odds"].item() == pytest.approx(0.004908, abs=5e-7)
    assert loss.item() == pytest.approx(0.10074, abs=5e-6)
    swapped, _ = mapo_loss(t(0.12), t(0.10), beta=0.1, snr_value=0.5, num_train_timesteps=1000)
    assert swapped.item() == pytest.approx(0.61157, abs=5e-6)


def test_mapo_margin_term_hand_computed():
    # E_w = E_l -> log_odds 0 -> logsigmoid(0) = -ln 2 -> loss = E_w + beta ln 2
    loss, metrics = mapo_loss(t(0.3, 0.5), t(0.3, 0.5), beta=0.1)
    assert loss.item() == pytest.approx(0.4 + 0.1 * math.log(2), abs=1e-12)
    assert metrics["margin_term"].item() == pytest.approx(0.1 * math.log(2), abs=1e-12)


def test_odds_transform_is_stable_and_accurate_near_zero():
    x = torch.tensor([0.0, 1e-12, 1e-6, 5e-4, 2e-3, 0.05, 1.0, 30.0], dtype=torch.float64)
    got = odds_transform(x)
    assert torch.isfinite(got).all()
    assert got[0].item() == 1.0
    for xi, gi in zip(x[1:].tolist(), got[1:].tolist()):
        assert gi == pytest.approx(xi / math.expm1(xi), rel=1e-12)
    # float32 and float16 must not produce NaN at zero either
    for dtype in (torch.float32, torch.float16):
        z = torch.zeros(3, dtype=dtype, requires_grad=True)
        out = odds_transform(z)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
        assert z.grad[0].item() == pytest.approx(-0.5, abs=1e-3)  # f'(0) = -1/2


def test_mapo_gradient_is_finite_when_errors_are_zero():
    err_w = torch.zeros(2, requires_grad=True)
    err_l = torch.zeros(2, requires_grad=True)
    loss, _ = mapo_loss(err_w, err_l)
    loss.backward()
    assert torch.isfinite(err_w.grad).all() and torch.isfinite(err_l.grad).all()


def test_sft_uses_only_chosen_errors():
    loss, metrics = sft_loss(t(0.2, 0.4))
    assert loss.item() == pytest.approx(0.3)
    assert metrics["model_err_w"].item() == pytest.approx(0.3)


def test_registry_routes_arguments_and_rejects_unknown_names():
    sft = get_objective("sft")
    assert not sft.needs_reference and not sft.uses_rejected
    loss, _ = compute_objective(sft, {}, t(1.0, 3.0), model_err_l=t(100.0, 100.0))
    assert loss.item() == pytest.approx(2.0)
    dpo = get_objective("dpo")
    assert dpo.needs_reference
    loss, _ = compute_objective(dpo, {"beta": 100}, t(0.10), t(0.12), t(0.11), t(0.11))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-9)
    with pytest.raises(ValueError, match="unknown method.objective 'ppo'.*dpo"):
        get_objective("ppo")
