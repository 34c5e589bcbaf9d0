"""Result rows per group and the reward-vs-step plot, on hand-made scores."""

import math

import pytest
import torch
from PIL import Image

from t2i_align.evaluation.aggregate import plot_reward_vs_step, result_rows, series_name
from t2i_align.evaluation.report import markdown_table

MODELS = [{"name": "base", "step": None}, {"name": "run@10", "step": 10}]


def test_rows_per_group_with_hand_computed_means_and_win_rates():
    scores = {"r": {"base": torch.tensor([1.0, 2.0, 3.0, 4.0]), "run@10": torch.tensor([2.0, 2.0, 1.0, 5.0])}}
    rows = result_rows(scores, ["a", "a", "b", "b"], MODELS, "base")
    by = {(r["model"], r["group"]): r for r in rows}
    assert [r["group"] for r in rows] == ["all", "all", "a", "a", "b", "b"]
    assert by[("base", "all")]["mean"] == pytest.approx(2.5) and by[("base", "all")]["win_rate"] is None
    assert by[("run@10", "all")]["mean"] == pytest.approx(2.5)
    # wins: key0 win, key1 tie, key2 loss, key3 win -> (2 + 0.5) / 4
    assert by[("run@10", "all")]["win_rate"] == pytest.approx(0.625)
    assert by[("run@10", "a")]["win_rate"] == pytest.approx(0.75)  # win + tie/2 over 2
    assert by[("run@10", "b")]["win_rate"] == pytest.approx(0.5)
    assert by[("run@10", "b")]["mean"] == pytest.approx(3.0) and by[("run@10", "b")]["n"] == 2
    assert by[("run@10", "a")]["step"] == 10 and by[("base", "a")]["step"] is None
    # sample std of [1, 2] = 0.7071 -> half-width 1.96 * 0.7071 / sqrt(2) = 0.98
    assert by[("base", "a")]["ci_high"] - by[("base", "a")]["mean"] == pytest.approx(1.96 * math.sqrt(0.5) / math.sqrt(2), rel=1e-3)


def test_single_group_gives_only_all_rows_and_bad_baseline_errors():
    scores = {"r": {"base": torch.tensor([1.0, 2.0]), "run@10": torch.tensor([2.0, 3.0])}}
    rows = result_rows(scores, ["", ""], MODELS, "base")
    assert {r["group"] for r in rows} == {"all"} and len(rows) == 2
    with pytest.raises(ValueError, match="eval.baseline='nope'"):
        result_rows(scores, ["", ""], MODELS, "nope")
    table = markdown_table(rows)
    assert "| step |" in table.splitlines()[0] and "| group |" not in table.splitlines()[0]
    assert "| run@10 | r | 10 | 2.5000 |" in table


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
