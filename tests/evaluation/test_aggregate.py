"""Result rows per group, clustered by prompt, with paired differences and Holm's correction, and
the plots, on hand-made scores."""

import math

import pytest
import torch
from PIL import Image

from t2i_align.evaluation.aggregate import (correct_comparisons, has_step_lines, plot_comparison, plot_results,
                                            plot_reward_vs_step, result_rows, series_name)
from t2i_align.evaluation.report import markdown_table, table_notes

MODELS = [{"name": "base", "step": None}, {"name": "run@10", "step": 10}]
T1 = math.tan(0.95 * math.pi / 2)           # t quantile, 95%, 1 df (12.706205)
T2 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))  # 2 df (4.302653)


def test_rows_per_group_with_hand_computed_means_and_win_rates():
    # no keys: every score is its own prompt with one seed (the ordinary interval over items)
    scores = {"r": {"base": torch.tensor([1.0, 2.0, 3.0, 4.0]), "run@10": torch.tensor([2.0, 2.0, 1.0, 5.0])}}
    rows = result_rows(scores, ["a", "a", "b", "b"], MODELS, "base")
    by = {(r["model"], r["group"]): r for r in rows}
    assert [r["group"] for r in rows] == ["all", "all", "a", "a", "b", "b"]
    assert by[("base", "all")]["mean"] == pytest.approx(2.5) and by[("base", "all")]["win_rate"] is None
    assert by[("base", "all")]["diff"] is None and by[("base", "all")]["p_adj"] is None
    assert by[("run@10", "all")]["mean"] == pytest.approx(2.5)
    # wins: key0 win, key1 tie, key2 loss, key3 win -> (2 + 0.5) / 4
    assert by[("run@10", "all")]["win_rate"] == pytest.approx(0.625)
    assert by[("run@10", "a")]["win_rate"] == pytest.approx(0.75)  # win + tie/2 over 2
    assert by[("run@10", "b")]["win_rate"] == pytest.approx(0.5)
    assert by[("run@10", "b")]["mean"] == pytest.approx(3.0) and by[("run@10", "b")]["n"] == 2
    assert (by[("run@10", "b")]["n_prompts"], by[("run@10", "b")]["n_seeds"]) == (2, 1)
    assert by[("run@10", "a")]["step"] == 10 and by[("base", "a")]["step"] is None
    # group a: [1, 2], s = 0.7071, se = 0.5, t with 1 df
    assert by[("base", "a")]["ci_high"] - by[("base", "a")]["mean"] == pytest.approx(T1 * 0.5)
    # differences [1, 0 | -2, 1]: all 0 (p 1); a 0.5 (t = 1, p 0.5); b -0.5 (t = -1/3, p = 1 - 2 atan(1/3) / pi)
    assert by[("run@10", "all")]["diff"] == pytest.approx(0.0)
    assert by[("run@10", "all")]["p_value"] == pytest.approx(1.0)
    assert by[("run@10", "a")]["p_value"] == pytest.approx(0.5)
    assert by[("run@10", "b")]["p_value"] == pytest.approx(1 - 2 * math.atan(1 / 3) / math.pi)  # 0.795167
    # Holm over the 3 comparisons: 3 * 0.5 clamps at 1, so every p_adj is 1
    assert [r["p_adj"] for r in rows if r["model"] == "run@10"] == pytest.approx([1.0, 1.0, 1.0])
    assert {r["n_comparisons"] for r in rows if r["model"] == "run@10"} == {3}


# 3 prompts x 2 seeds; reward q: base all 0, the candidate 1 except the last image (a rate)
KEYS_3x2 = [(p, s) for p in ("P1", "P2", "P3") for s in (0, 1)]
SCORES_3x2 = {"r": {"base": torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0, 8.0]),
                    "run@10": torch.tensor([2.0, 3.0, 3.0, 6.0, 7.0, 8.0])},
              "q": {"base": torch.zeros(6), "run@10": torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])}}


def test_rows_clustered_by_prompt_with_paired_difference_holm_and_data_rewards():
    rows = result_rows(SCORES_3x2, [""] * 6, MODELS, "base", keys=KEYS_3x2, data_rewards=["q"])
    by = {(r["model"], r["reward"]): r for r in rows}
    r_base, r_run, q_run = by[("base", "r")], by[("run@10", "r")], by[("run@10", "q")]
    assert (r_base["n_prompts"], r_base["n_seeds"], r_base["n"]) == (3, 2, 6)
    # r base: prompt means [2, 3, 7] -> 4, s = sqrt(7), se = sqrt(7 / 3), t with 2 df
    assert r_base["mean"] == pytest.approx(4.0)
    assert r_base["ci_high"] - 4.0 == pytest.approx(T2 * math.sqrt(7 / 3))  # 6.5724
    # r: per-prompt differences [0.5, 1.5, 0.5] -> 5/6, se 1/3, t = 2.5, p = 1 - 2.5 / sqrt(8.25)
    assert r_run["diff"] == pytest.approx(5 / 6)
    assert (r_run["diff_low"], r_run["diff_high"]) == pytest.approx((5 / 6 - T2 / 3, 5 / 6 + T2 / 3))
    assert r_run["p_value"] == pytest.approx(0.129612, abs=1e-6)
    # win rate per prompt [0.75, 1, 0.75] -> 5/6, se 1/12
    assert r_run["win_rate"] == pytest.approx(5 / 6) and r_run["win_low"] == pytest.approx(5 / 6 - T2 / 12)
    # q (a rate): differences per prompt [1, 1, 0.5] -> 5/6, se 1/6, t = 5, p = 1 - 5 / sqrt(27) = 0.037750
    assert q_run["diff"] == pytest.approx(5 / 6) and q_run["p_value"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert by[("base", "q")]["mean"] == 0.0 and (by[("base", "q")]["ci_low"], by[("base", "q")]["ci_high"]) == (0, 0)
    assert q_run["ci_high"] == 1.0  # 5/6 + T2 / 6 clamped
    assert q_run["diff_low"] == pytest.approx(5 / 6 - T2 / 6) and q_run["diff_high"] == 1.0  # a rate difference: <= 1
    # Holm over 2 comparisons: q 2 * 0.037750 = 0.0755 (no longer significant); r max(0.0755, 0.129612)
    assert q_run["p_adj"] == pytest.approx(2 * (1 - 5 / math.sqrt(27))) and q_run["significant"] is False
    assert r_run["p_adj"] == pytest.approx(0.129612, abs=1e-6) and r_run["significant"] is False
    assert r_run["correction"] == "holm" and r_run["n_comparisons"] == 2
    # without the correction q's difference is significant at 0.05
    plain = {(r["model"], r["reward"]): r for r in correct_comparisons(rows, "none")}
    assert plain[("run@10", "q")]["p_adj"] == q_run["p_value"] and plain[("run@10", "q")]["significant"] is True
    with pytest.raises(ValueError, match="correction"):
        result_rows(SCORES_3x2, [""] * 6, MODELS, "base", keys=KEYS_3x2, correction="bonferroni")
    # the reward that built the training data is marked, in the rows, the table and its notes
    assert [r["used_in_training_data"] for r in rows] == [False, False, True, True]
    table = markdown_table(rows)
    assert "| run@10 | q \u2020 | 10 | 3 | 2 |" in table
    notes = " ".join(table_notes(rows))
    assert "3 prompts x 2 seeds" in notes and "Holm-Bonferroni correction over the 2 comparisons" in notes
    assert "q was used on the training data" in notes and "not independent evidence" in notes


def test_single_group_gives_only_all_rows_and_bad_baseline_errors():
    scores = {"r": {"base": torch.tensor([1.0, 2.0]), "run@10": torch.tensor([2.0, 3.0])}}
    rows = result_rows(scores, ["", ""], MODELS, "base")
    assert {r["group"] for r in rows} == {"all"} and len(rows) == 2
    with pytest.raises(ValueError, match="eval.baseline='nope'"):
        result_rows(scores, ["", ""], MODELS, "nope")
    table = markdown_table(rows)
    assert "| step |" in table.splitlines()[0] and "| group |" not in table.splitlines()[0]
    assert "| run@10 | r | 10 | 2 | 1 | 2.5000 |" in table  # n_prompts 2, n_seeds 1
    assert table.splitlines()[0].startswith("| model | reward | step | n_prompts | n_seeds | mean |")


def test_plot_written_only_when_models_have_steps(tmp_path):
    rows = [
        {"model": "base", "reward": "r", "group": "all", "step": None, "mean": 1.0, "ci_low": 0.9, "ci_high": 1.1},
        {"model": "run@10", "reward": "r", "group": "all", "step": 10, "mean": 1.2, "ci_low": 1.0, "ci_high": 1.4},
        {"model": "run@20", "reward": "r", "group": "all", "step": 20, "mean": 1.3, "ci_low": 1.1, "ci_high": 1.5},
        {"model": "run@20", "reward": "s", "group": "all", "step": 20, "mean": 5.0, "ci_low": 4.0, "ci_high": 6.0},
    ]
    out = plot_reward_vs_step(rows, tmp_path / "plot.png")
    image = Image.open(out)
    assert image.size == (900, 360)  # two panels of 4.5 x 3.6 inches at 100 dpi
    assert plot_reward_vs_step(rows[:1], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert series_name("a@b@30") == "a@b" and series_name("final") == "final"


def test_plot_results_picks_step_lines_or_the_base_vs_aligned_chart(tmp_path):
    rows = result_rows(SCORES_3x2, [""] * 6, MODELS, "base", keys=KEYS_3x2)
    # one checkpoint (run@10): no line of >= 2 steps -> base vs aligned, 2 rewards of 3.2 x 4.6 inches
    assert not has_step_lines(rows)
    out = plot_results(rows, tmp_path)
    assert out == tmp_path / "comparison.png" and not (tmp_path / "reward_vs_step.png").exists()
    assert Image.open(out).size == (640, 460)
    assert plot_results([r for r in rows if r["model"] == "base"], tmp_path / "x") is None  # nothing to compare
    assert plot_comparison([r for r in rows if r["model"] == "base"], tmp_path / "c.png") is None
    # two checkpoints of one run -> reward vs step
    two = result_rows({k: {**v, "run@20": v["run@10"] + 1} for k, v in SCORES_3x2.items()}, [""] * 6,
                      [*MODELS, {"name": "run@20", "step": 20}], "base", keys=KEYS_3x2)
    assert has_step_lines(two)
    assert plot_results(two, tmp_path) == tmp_path / "reward_vs_step.png"


def test_reward_vs_step_panels_wrap_at_three_columns(tmp_path):
    rows = [{"model": m, "reward": f"r{i}", "group": "all", "step": step, "mean": 1.0, "ci_low": math.nan,
             "ci_high": math.nan} for i in range(4) for m, step in (("base", None), ("run@10", 10), ("run@20", 20))]
    out = plot_reward_vs_step(rows, tmp_path / "plot.png")
    assert Image.open(out).size == (1350, 720)  # 3 columns x 2 rows of 4.5 x 3.6 inches, NaN CIs drawn without bars
