"""Confidence intervals and win rates against hand-computed values."""

import math

import pytest
import torch

from t2i_align.evaluation.metrics import mean_confidence_interval, win_outcomes, win_rate, z_value


def test_z_value():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.5)


def test_mean_confidence_interval_by_hand():
    # values 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3) = 1.290994, se = 0.645497
    mean, low, high = mean_confidence_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert high - mean == pytest.approx(1.959964 * 0.645497, abs=1e-5)  # 1.265151
    assert mean - low == pytest.approx(high - mean)
    assert mean_confidence_interval(torch.tensor([7.0])) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        mean_confidence_interval(torch.tensor([]))


def test_win_outcomes_count_ties_half():
    out = win_outcomes(torch.tensor([2.0, 1.0, 3.0, 5.0]), torch.tensor([1.0, 1.0, 4.0, 4.95]), tie_tolerance=0.1)
    assert out.tolist() == [1.0, 0.5, 0.0, 0.5]


def test_win_rate_wilson_by_hand():
    # 8 wins, 1 tie, 1 loss of 10 -> p = 0.85
    cand = torch.tensor([1.0] * 8 + [0.5, 0.0])
    base = torch.tensor([0.0] * 8 + [0.5, 1.0])
    p, low, high = win_rate(cand, base)
    z, n = 1.959964, 10
    centre = (0.85 + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(0.85 * 0.15 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert p == pytest.approx(0.85)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert (low, high) == pytest.approx((0.5412, 0.9646), abs=1e-3)  # centre 0.7529 +- 0.2117


def test_win_rate_bounds_and_shape_errors():
    p, low, high = win_rate(torch.ones(5), torch.zeros(5))
    assert p == 1.0 and high == 1.0 and 0.5 < low < 1.0
    with pytest.raises(ValueError, match="paired"):
        win_rate(torch.ones(3), torch.ones(4))


def test_reward_registry_names_and_unknown():
    from t2i_align.evaluation.rewards import REWARDS, load_reward

    assert {"pickscore", "clip_score", "aesthetic", "hpsv2", "hpsv2_1"} <= set(REWARDS)
    with pytest.raises(ValueError, match="unknown reward 'fid'"):
        load_reward("fid")


def test_rates_get_the_wilson_interval_by_hand():
    # p = 0.5, n = 4: centre 0.5, half = 1.96 * sqrt(0.0625 + 1.96^2 / 64) / (1 + 1.96^2 / 4) = 0.34997
    mean, low, high = mean_confidence_interval(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert mean == 0.5 and low == pytest.approx(0.5 - 0.34997, abs=1e-4) and high == pytest.approx(0.5 + 0.34997, abs=1e-4)
    mean, low, high = mean_confidence_interval(torch.tensor([0.0] * 10))
    assert mean == 0.0 and low == pytest.approx(0.0, abs=1e-12) and 0.2 < high < 0.35  # never below 0
