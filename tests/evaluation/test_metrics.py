"""Clustered intervals, paired differences, win rates and Holm's adjustment against hand-computed values."""

import math

import pytest
import torch

from t2i_align.evaluation.metrics import (cluster_bootstrap_interval, cluster_means, holm_adjust,
                                          interval_over_clusters, mean_confidence_interval, paired_difference,
                                          t_central_mass, t_test_p_value, t_value, win_outcomes, win_rate, z_value)

T1 = math.tan(0.95 * math.pi / 2)              # t quantile, 95%, 1 df: 12.706205 (df 1: P(|T| <= t) = 2 atan(t) / pi)
T2 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))     # 2 df: P(|T| <= t) = t / sqrt(2 + t^2) -> 4.302653

# 2 prompts x 3 seeds (keys in prompt-major order, as evaluate.py makes them)
PROMPTS_2x3 = ["A", "A", "A", "B", "B", "B"]
BASE_2x3 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
CAND_2x3 = torch.tensor([2.0, 4.0, 3.0, 3.0, 5.0, 7.0])
# 3 prompts x 2 seeds
PROMPTS_3x2 = ["P1", "P1", "P2", "P2", "P3", "P3"]
BASE_3x2 = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0, 8.0])
CAND_3x2 = torch.tensor([2.0, 3.0, 3.0, 6.0, 7.0, 8.0])


def test_z_and_t_quantiles():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.5)
    assert T1 == pytest.approx(12.706205, abs=1e-6) and T2 == pytest.approx(4.302653, abs=1e-6)
    assert t_value(0.95, 1) == pytest.approx(T1, abs=1e-9)
    assert t_value(0.95, 2) == pytest.approx(T2, abs=1e-9)
    # printed t tables: df 3, 4, 5, 30; 99% with 3 df; large df -> the normal quantile
    for df, t in [(3, 3.182446), (4, 2.776445), (5, 2.570582), (30, 2.042272)]:
        assert t_value(0.95, df) == pytest.approx(t, abs=1e-6), df
    assert t_value(0.99, 3) == pytest.approx(5.840909, abs=1e-6)
    z = z_value(0.95)  # large df: z + (z^3 + z) / (4 df) (Cornish-Fisher) -> 1.960083
    assert t_value(0.95, 20000) == pytest.approx(z + (z ** 3 + z) / (4 * 20000), abs=1e-6)
    assert t_central_mass(1.0, 1) == pytest.approx(0.5)  # 2 atan(1) / pi
    assert t_central_mass(2.0, 7) == pytest.approx(1 - 0.085619, abs=1e-6)  # table: two-sided p(t=2, 7 df)
    with pytest.raises(ValueError):
        t_central_mass(1.0, 0)


def test_cluster_means_in_order_of_first_appearance():
    assert cluster_means(BASE_2x3, PROMPTS_2x3).tolist() == [2.0, 5.0]
    assert cluster_means(torch.tensor([1.0, 5.0, 3.0]), ["b", "a", "b"]).tolist() == [2.0, 5.0]
    assert cluster_means(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]  # None: each value its own prompt
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_means(torch.tensor([1.0, 2.0]), ["a"])


def test_mean_interval_2_prompts_x_3_seeds_is_clustered_by_prompt():
    # prompt means [2, 5] -> mean 3.5, s = 3 / sqrt(2), se = s / sqrt(2) = 1.5; t with 1 df
    mean, low, high = mean_confidence_interval(BASE_2x3, clusters=PROMPTS_2x3)
    assert mean == pytest.approx(3.5)
    assert (low, high) == pytest.approx((3.5 - T1 * 1.5, 3.5 + T1 * 1.5))  # [-15.559, 22.559]
    # the naive interval over the 6 images as if independent (t, 5 df) is far narrower
    naive_half = 2.570582 * torch.tensor([1.0, 2, 3, 4, 5, 6]).std().item() / math.sqrt(6)  # 1.963
    assert high - mean > 9 * naive_half


def test_one_seed_per_prompt_is_the_ordinary_t_interval():
    # 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.290994, se = 0.645497, t with 3 df = 3.182446
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, low, high = mean_confidence_interval(values)
    assert mean == pytest.approx(2.5)
    assert high - mean == pytest.approx(3.182446 * 0.645497, abs=1e-5)  # 2.054254
    assert mean - low == pytest.approx(high - mean)
    assert mean_confidence_interval(values, clusters=["a", "b", "c", "d"]) == pytest.approx((mean, low, high))
    single = mean_confidence_interval(torch.tensor([7.0]))
    assert single[0] == 7.0 and math.isnan(single[1]) and math.isnan(single[2])  # one prompt: undefined
    with pytest.raises(ValueError):
        mean_confidence_interval(torch.tensor([]))


def test_rates_get_the_clustered_interval_clamped_to_0_1():
    # 5 prompts x 2 seeds of 0/1: per-prompt rates [1, 1, 0.5, 0.5, 0] -> 0.6, s = sqrt(0.175),
    # se = 0.187083, t with 4 df = 2.776445 -> 0.6 -+ 0.519426 = [0.080574, 1.119 -> 1]
    values = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 1, 0, 0])
    prompts = [p for p in "abcde" for _ in range(2)]
    mean, low, high = mean_confidence_interval(values, clusters=prompts)
    assert mean == pytest.approx(0.6)
    assert low == pytest.approx(0.6 - 2.776445 * math.sqrt(0.175) / math.sqrt(5), abs=1e-6)  # 0.080574
    assert high == 1.0
    assert mean_confidence_interval(torch.zeros(10), clusters=prompts) == (0.0, 0.0, 0.0)  # no spread at all
    assert interval_over_clusters(torch.tensor([0.2, 0.9]), bounds=(0.0, 1.0))[1:] == (0.0, 1.0)


def test_paired_difference_2_prompts_x_3_seeds():
    # differences: A [1, 2, 0] -> 1, B [-1, 0, 1] -> 0; mean 0.5, s = 1 / sqrt(2), se = 0.5
    diff, low, high, p = paired_difference(CAND_2x3, BASE_2x3, PROMPTS_2x3)
    assert diff == pytest.approx(0.5)
    assert (low, high) == pytest.approx((0.5 - T1 * 0.5, 0.5 + T1 * 0.5))  # [-5.853, 6.853]
    assert p == pytest.approx(0.5)  # t = 0.5 / 0.5 = 1 with 1 df: 1 - 2 atan(1) / pi
    with pytest.raises(ValueError, match="paired"):
        paired_difference(torch.ones(3), torch.ones(4))


def test_paired_difference_3_prompts_x_2_seeds():
    # per-prompt differences [0.5, 1.5, 0.5]: mean 5/6, s = sqrt(1/3), se = 1/3, t = 2.5 (2 df)
    diff, low, high, p = paired_difference(CAND_3x2, BASE_3x2, PROMPTS_3x2)
    assert diff == pytest.approx(5 / 6)
    assert (low, high) == pytest.approx((5 / 6 - T2 / 3, 5 / 6 + T2 / 3))  # [-0.601, 2.268]
    assert p == pytest.approx(1 - 2.5 / math.sqrt(2 + 2.5 ** 2))  # 0.129612
    assert p == pytest.approx(0.129612, abs=1e-6)
    assert t_test_p_value(torch.tensor([1.0, 1.0])) == 0.0 and t_test_p_value(torch.tensor([0.0, 0.0])) == 1.0
    assert math.isnan(t_test_p_value(torch.tensor([1.0])))


def test_win_outcomes_count_ties_half():
    out = win_outcomes(torch.tensor([2.0, 1.0, 3.0, 5.0]), torch.tensor([1.0, 1.0, 4.0, 4.95]), tie_tolerance=0.1)
    assert out.tolist() == [1.0, 0.5, 0.0, 0.5]


def test_win_rate_is_clustered_by_prompt():
    # 2 x 3: A wins [1, 1, tie] -> 5/6, B [loss, tie, win] -> 1/2; mean 2/3, se = (1/3) / sqrt(2) / sqrt(2)
    rate, low, high = win_rate(CAND_2x3, BASE_2x3, clusters=PROMPTS_2x3)
    assert rate == pytest.approx(2 / 3)
    assert (low, high) == (0.0, 1.0)  # 2/3 -+ T1 / 6 = 2/3 -+ 2.118, clamped
    # 3 x 2: P1 [win, tie] 0.75, P2 [win, win] 1, P3 [win, tie] 0.75 -> 5/6, s = 0.144338, se = 1/12
    rate, low, high = win_rate(CAND_3x2, BASE_3x2, clusters=PROMPTS_3x2)
    assert rate == pytest.approx(5 / 6)
    assert low == pytest.approx(5 / 6 - T2 / 12)  # 0.474779
    assert high == 1.0  # 5/6 + 0.358554 clamped


def test_win_rate_bounds_and_shape_errors():
    p, low, high = win_rate(torch.ones(5), torch.zeros(5))
    assert (p, low, high) == (1.0, 1.0, 1.0)  # every prompt won: no spread between prompts
    with pytest.raises(ValueError, match="paired"):
        win_rate(torch.ones(3), torch.ones(4))


def test_holm_adjust_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 * 0.005 = 0.02; max(0.02, 3 * 0.01) = 0.03;
    # max(0.03, 2 * 0.03) = 0.06; max(0.06, 1 * 0.04) = 0.06; back in the input order:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # min(1, 2 * 0.5) = 1, then max(1, 0.6)
    assert holm_adjust([0.2]) == pytest.approx([0.2])
    adjusted = holm_adjust([0.01, math.nan, 0.04])  # NaN: no test, not counted (m = 2)
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm_adjust([]) == []


def test_cluster_bootstrap_is_seeded_and_clustered():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 2.0, 2.5, 3.0])
    prompts = [p for p in "abc" for _ in range(3)]  # prompt means 2, 5, 2.5
    first = cluster_bootstrap_interval(values, prompts, n_boot=500, seed=3)
    assert first == cluster_bootstrap_interval(values, prompts, n_boot=500, seed=3)
    mean, low, high = first
    assert mean == pytest.approx(9.5 / 3)
    assert 2.0 <= low <= mean <= high <= 5.0  # resampled means of prompt means stay within them
    assert cluster_bootstrap_interval(torch.tensor([1.0, 3.0]), ["a", "a"], n_boot=50) == (2.0, 2.0, 2.0)


def test_reward_registry_names_and_unknown():
    from t2i_align.evaluation.rewards import REWARDS, load_reward

    assert {"pickscore", "clip_score", "aesthetic", "hpsv2", "hpsv2_1"} <= set(REWARDS)
    with pytest.raises(ValueError, match="unknown reward 'fid'"):
        load_reward("fid")
