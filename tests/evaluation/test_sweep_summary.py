"""The sweep summary on fake job folders (no models): one line per job in the plot, each job's points
being its paired difference to its OWN base, and the summary tables' statistics columns."""

import csv
import json
import math

import pytest
import torch
import yaml
from PIL import Image

from t2i_align.evaluation.aggregate import paired_difference_figure, result_rows
from t2i_align.evaluation.sweep import collect_rows, job_labels, job_settings, line_function, summarise_sweep

KEYS = [(p, s) for p in ("P1", "P2", "P3") for s in (0, 1)]
BASE = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
NOISE = torch.tensor([0.3, 0.3, -0.3, -0.3, 0.0, 0.0], dtype=torch.float64)  # per prompt 0.3, -0.3, 0: mean 0, sd 0.3
T2 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))  # t quantile, 95%, 2 df


def make_job(sweep, number, overrides, models, base_shift, gain):
    """A job folder as Hydra leaves it: .hydra/overrides.yaml and results.json. Its base scores
    BASE + base_shift; a model at step s scores its base + gain + s / 100 + NOISE."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    base = BASE + base_shift
    scores = {"r": {"base": base, **{m["name"]: base + gain + m["step"] / 100 + NOISE for m in models}}}
    rows = result_rows(scores, [""] * len(KEYS), [{"name": "base", "step": None}, *models], "base", keys=KEYS)
    (job / "results.json").write_text(json.dumps(rows))
    return job


def guidance_sweep(tmp_path, models):
    """3 jobs: eval.guidance_scale=3,5,7 on the same checkpoint; job g's base is 10 g higher and its
    models gain g over their own base."""
    sweep = tmp_path / "sweep"
    for g, scale in enumerate((3, 5, 7)):
        make_job(sweep, g, ["checkpoint=/runs/A", f"eval.guidance_scale={scale}"], models, base_shift=10 * g, gain=g)
    return sweep


def drawn(ax) -> dict:
    """{label: [[x, y], ...]} of the errorbar lines of a panel (rounded: float sums)."""
    return {c.get_label(): [[round(x, 9), round(y, 9)] for x, y in c.lines[0].get_xydata().tolist()]
            for c in ax.containers}


TWO_STEPS = [{"name": "A@100", "step": 100}, {"name": "A@200", "step": 200}]


def test_sweep_plot_has_one_line_per_job_against_its_own_base(tmp_path):
    sweep = guidance_sweep(tmp_path, TWO_STEPS)
    rows, jobs = collect_rows(sweep)
    assert list(job_labels(jobs).values()) == [f"eval.guidance_scale={s}" for s in (3, 5, 7)]
    line_of = line_function(rows, jobs)
    fig = paired_difference_figure(rows, line_of)
    (ax,) = [a for a in fig.axes if a.get_visible()]  # one reward -> one panel
    # each job's line: its models' gain over ITS base (g + step / 100), not over job 0's base (10 g more)
    assert drawn(ax) == {f"A eval.guidance_scale={s}": [[100, g + 1.0], [200, g + 2.0]]
                         for g, s in enumerate((3, 5, 7))}
    # error bars: the clustered interval of the differences, +- T2 * 0.3 / sqrt(3)
    bars = ax.containers[0].lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in bars] == pytest.approx([2 * T2 * 0.3 / math.sqrt(3)] * 2)
    assert ax.get_xlabel() == "training step"

    out = summarise_sweep(sweep)
    assert Image.open(sweep / "reward_vs_step.png").size[0] > 0 and not (sweep / "comparison.png").exists()
    with open(sweep / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 * 3
    assert {(r["n_prompts"], r["n_seeds"]) for r in table} == {("3", "2")}
    assert {r["n_comparisons"] for r in table if r["model"] != "base"} == {"2"}  # Holm within each job
    html = out.read_text()
    assert "each job&#x27;s table on its own" in html and "own base" in html
    assert "3 prompts x 2 seeds" in (sweep / "summary.md").read_text()


def test_sweep_over_checkpoints_draws_one_line_over_steps(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["checkpoint=/runs/A/checkpoints/step_100"], TWO_STEPS[:1], base_shift=0, gain=0)
    make_job(sweep, 1, ["checkpoint=/runs/A/final"], TWO_STEPS[1:], base_shift=0, gain=0)
    rows, jobs = collect_rows(sweep)
    assert list(job_settings(jobs).values()) == ["", ""]  # only the checkpoint differs
    fig = paired_difference_figure(rows, line_function(rows, jobs))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert drawn(ax) == {"A": [[100, 1.0], [200, 2.0]]}


def test_sweep_with_one_checkpoint_per_job_gets_one_point_per_job(tmp_path):
    sweep = guidance_sweep(tmp_path, TWO_STEPS[:1])
    rows, jobs = collect_rows(sweep)
    fig = paired_difference_figure(rows, line_function(rows, jobs))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    # no line with 2 steps: categorical positions, one per job, not dots on a 285-315 step axis
    points = drawn(ax)
    assert points == {f"A eval.guidance_scale={s}": [[g, g + 1.0]] for g, s in enumerate((3, 5, 7))}
    assert [t.get_text() for t in ax.get_xticklabels()] == list(points)
    summarise_sweep(sweep)
    assert (sweep / "comparison.png").is_file() and not (sweep / "reward_vs_step.png").exists()
