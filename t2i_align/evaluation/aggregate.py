"""From per-image scores to result rows, and the plots of an evaluation.

A row: model, reward, group ("all", or a benchmark group such as an HPSv2 style), step (the
model's training step; None for the base), n_prompts, n_seeds, n (images), the mean and its
interval clustered by prompt (metrics.py: t over prompt means), whether the reward was used on
the training data (eval.data_rewards), and for every model but the baseline the comparison with
the baseline on the same (prompt, seed) items: the paired difference (diff, diff_low, diff_high),
its p-value (two-sided paired t over prompt means), the p-value adjusted for the table's
comparisons (Holm by default) with a significance flag, and the clustered win rate (ties half).
README.md (Evaluation, "Statistics") says why each is there.
"""

import math
from pathlib import Path

import torch

from .metrics import holm_adjust, mean_confidence_interval, paired_difference, win_rate
from t2i_align.errors import InputError

CORRECTIONS = ("holm", "none")
COMPARISON_FIELDS = ("diff", "diff_low", "diff_high", "p_value", "p_adj", "significant",
                     "win_rate", "win_low", "win_high", "correction", "n_comparisons")


def _selections(groups: list[str]) -> list[tuple[str, torch.Tensor]]:
    """("all", every key) first, then one mask per group when there is more than one group."""
    distinct = list(dict.fromkeys(groups))
    selections = [("all", torch.ones(len(groups), dtype=torch.bool))]
    if len(distinct) > 1:
        selections += [(g, torch.tensor([x == g for x in groups])) for g in distinct]
    return selections


def result_rows(scores: dict, groups: list[str], models: list[dict], baseline: str, keys=None,
                confidence: float = 0.95, correction: str = "holm", data_rewards=()) -> list[dict]:
    """scores: {reward: {model name: tensor [K]}} over the same K (prompt, seed) keys, in order;
    groups: the group of each key ("" when the prompt set has none); models: [{"name", "step"}];
    keys: the K (prompt, seed) pairs: intervals are clustered by their prompt (None: every key is
    its own prompt with one seed); correction: "holm" or "none" over all comparison rows of the
    table (every reward x group x non-baseline model); data_rewards: names of rewards that built,
    filtered or trained on the training data (their rows say used_in_training_data).

    Rows for every (reward, group, model): group "all" first, then one per group when the keys
    come from more than one group."""
    names = [m["name"] for m in models]
    if baseline not in names:
        raise InputError(f"eval.baseline={baseline!r} is not one of the models {names}")
    if correction not in CORRECTIONS:
        raise InputError(f"eval.correction must be one of {CORRECTIONS}, got {correction!r}")
    keys = [(i, 0) for i in range(len(groups))] if keys is None else [tuple(k) for k in keys]
    if len(keys) != len(groups):
        raise InputError(f"{len(keys)} keys but {len(groups)} groups")
    data_rewards = set(data_rewards)
    rows = []
    for reward, per_model in scores.items():
        for group, mask in _selections(groups):
            selected = [k for k, keep in zip(keys, mask.tolist()) if keep]
            prompts = [p for p, _ in selected]
            base_values = per_model[baseline][mask]
            for model in models:
                values = per_model[model["name"]][mask]
                mean, low, high = mean_confidence_interval(values, confidence, prompts)
                row = {"model": model["name"], "reward": reward, "group": group, "step": model.get("step"),
                       "n_prompts": len(set(prompts)), "n_seeds": len({s for _, s in selected}),
                       "n": int(values.numel()), "mean": mean, "ci_low": low, "ci_high": high,
                       **dict.fromkeys(COMPARISON_FIELDS), "used_in_training_data": reward in data_rewards}
                if model["name"] != baseline:
                    row["diff"], row["diff_low"], row["diff_high"], row["p_value"] = paired_difference(
                        values, base_values, prompts, confidence)
                    row["win_rate"], row["win_low"], row["win_high"] = win_rate(
                        values, base_values, confidence, clusters=prompts)
                rows.append(row)
    return correct_comparisons(rows, correction, confidence)


def correct_comparisons(rows: list[dict], correction: str = "holm", confidence: float = 0.95) -> list[dict]:
    """Copies of `rows` with p_adj, significant (p_adj <= 1 - confidence), correction and
    n_comparisons filled in on the comparison rows (those with a p_value), adjusted together
    as one family: Holm-Bonferroni (Holm 1979) or none (p_adj = p_value). Comparisons without
    a test (NaN p, one prompt) are not counted and never significant."""
    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    rows = [dict(r) for r in rows]
    compared = [r for r in rows if r.get("p_value") is not None]
    p_values = [r["p_value"] for r in compared]
    adjusted = holm_adjust(p_values) if correction == "holm" else p_values
    m = sum(not math.isnan(p) for p in p_values)
    for r, p_adj in zip(compared, adjusted):
        r.update(p_adj=p_adj, significant=bool(p_adj <= 1 - confidence), correction=correction, n_comparisons=m)
    return rows


def series_name(model_name: str) -> str:
    """"run@step" -> "run": the line a checkpoint belongs to in the reward-vs-step plot."""
    return model_name.rsplit("@", 1)[0]


def step_series(rows: list[dict], line_of=lambda r: series_name(r["model"])) -> dict:
    """{line: {step: row}} of the rows with a step (line = line_of(row); a model's run by default),
    steps ascending: what a reward-vs-step plot would draw."""
    lines: dict = {}
    for r in rows:
        if r.get("step") is not None:
            lines.setdefault(line_of(r), {})[r["step"]] = r
    return {name: dict(sorted(points.items())) for name, points in lines.items()}


def has_step_lines(rows: list[dict], line_of=lambda r: series_name(r["model"])) -> bool:
    """True when some line has at least 2 training steps; otherwise a reward-vs-step plot would
    be single dots on a meaningless axis (e.g. base vs one checkpoint)."""
    return any(len(points) >= 2 for points in step_series(rows, line_of).values())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int, width: float, height: float, rows_per_panel: int = 1, max_columns: int = 3):
    """A figure of n panels, at most max_columns per row (so it stays narrow), each panel a
    column of rows_per_panel axes; returns (fig, [[axes of panel i]])."""
    plt = _pyplot()
    columns = min(max_columns, n)
    panel_rows = math.ceil(n / columns)
    fig, axes = plt.subplots(panel_rows * rows_per_panel, columns, figsize=(width * columns, height * panel_rows),
                             squeeze=False)
    panels = []
    for i in range(panel_rows * columns):
        r, c = divmod(i, columns)
        mine = [axes[r * rows_per_panel + k][c] for k in range(rows_per_panel)]
        if i < n:
            panels.append(mine)
        else:
            for ax in mine:
                ax.set_visible(False)
    return fig, panels


def _yerr(points: list[dict], mean="mean", low="ci_low", high="ci_high"):
    """Error bar lengths below and above; 0 where the interval is undefined (NaN)."""
    def clean(x):
        return 0.0 if x is None or math.isnan(x) else max(x, 0.0)
    return [[clean(p[mean] - p[low]) for p in points], [clean(p[high] - p[mean]) for p in points]]


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def plot_reward_vs_step(rows: list[dict], out: Path, baseline: str = "base") -> Path | None:
    """One panel per reward: mean reward (clustered 95% CI as error bars) against training step,
    a line per run, the baseline as a dashed horizontal line with its CI as a band. Only group
    "all" rows. None (nothing written) when no row has a step."""
    rows = [r for r in rows if r.get("group", "all") == "all"]
    if not any(r.get("step") is not None for r in rows):
        return None
    rewards = list(dict.fromkeys(r["reward"] for r in rows))
    fig, panels = _panels(len(rewards), 4.5, 3.6)
    for (ax,), reward in zip(panels, rewards):
        mine = [r for r in rows if r["reward"] == reward]
        for name, points in step_series(mine).items():
            points = list(points.values())
            ax.errorbar([p["step"] for p in points], [p["mean"] for p in points], yerr=_yerr(points),
                        marker="o", capsize=3, label=name)
        base = [r for r in mine if r["model"] == baseline]
        if base:
            ax.axhline(base[0]["mean"], linestyle="--", color="grey", label=baseline)
            if not math.isnan(base[0]["ci_low"]):
                ax.axhspan(base[0]["ci_low"], base[0]["ci_high"], color="grey", alpha=0.15)
        ax.set_title(reward)
        ax.set_xlabel("training step")
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=7)
    return _save(fig, out)


def plot_comparison(rows: list[dict], out: Path, baseline: str = "base") -> Path | None:
    """Base vs aligned, one panel per reward (group "all" rows): on top each model's mean with
    its clustered 95% CI, below each non-baseline model's paired difference to the baseline with
    its CI and the zero line. For evaluations without a line of >= 2 steps (e.g. base vs one
    checkpoint), where a reward-vs-step plot would be one dot per panel. None when there is no
    non-baseline model."""
    rows = [r for r in rows if r.get("group", "all") == "all"]
    if not any(r["model"] != baseline for r in rows):
        return None
    rewards = list(dict.fromkeys(r["reward"] for r in rows))
    fig, panels = _panels(len(rewards), 3.2, 4.6, rows_per_panel=2)
    for (top, bottom), reward in zip(panels, rewards):
        mine = [r for r in rows if r["reward"] == reward]
        top.errorbar(range(len(mine)), [r["mean"] for r in mine], yerr=_yerr(mine), fmt="o", capsize=4)
        _categorical_ticks(top, [r["model"] for r in mine])
        top.set_title(reward + (" (training data)" if any(r.get("used_in_training_data") for r in mine) else ""))
        top.set_ylabel("mean, 95% CI")
        _draw_differences(bottom, [r for r in mine if r["model"] != baseline], [r["model"] for r in mine
                                                                                 if r["model"] != baseline])
        bottom.set_ylabel(f"minus {baseline}, 95% CI")
    return _save(fig, out)


def _draw_differences(ax, rows: list[dict], labels: list[str]) -> None:
    """Paired differences with their CIs at categorical positions, filled where significant after
    the correction, and a dashed zero line (no difference to the baseline)."""
    for i, (r, label) in enumerate(zip(rows, labels)):
        ax.errorbar([i], [r["diff"]], yerr=_yerr([r], "diff", "diff_low", "diff_high"), fmt="o", capsize=4,
                    color=f"C{i}", mfc=f"C{i}" if r.get("significant") else "white", label=label)
    ax.axhline(0.0, linestyle="--", color="grey")
    _categorical_ticks(ax, labels)


def _categorical_ticks(ax, labels: list[str]) -> None:
    """One tick per label; long labels (run names, sweep settings) slanted so they do not overlap."""
    long = any(len(label) > 12 for label in labels)
    ax.set_xticks(range(len(labels)), labels, fontsize=7 if long else 8, rotation=20 if long else 0,
                  ha="right" if long else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def plot_results(rows: list[dict], run_dir: Path, baseline: str = "base") -> Path | None:
    """The evaluation's plot: reward_vs_step.png when some run has >= 2 checkpoints, else
    comparison.png (base vs aligned) when there is an aligned model, else None."""
    run_dir = Path(run_dir)
    if has_step_lines([r for r in rows if r.get("group", "all") == "all"]):
        return plot_reward_vs_step(rows, run_dir / "reward_vs_step.png", baseline)
    return plot_comparison(rows, run_dir / "comparison.png", baseline)


def paired_difference_figure(rows: list[dict], line_of=lambda r: series_name(r["model"]),
                             baseline: str = "base"):
    """The matplotlib Figure (not saved, not closed) of the paired differences of rows to THEIR
    OWN baseline (each row's diff, diff_low, diff_high, as result_rows computed them within its
    evaluation; group "all" rows), one panel per reward and one errorbar line per line_of(row):
    against training step when some line has >= 2 steps (rows without a step are then left out),
    otherwise at one categorical position per line. The dashed zero line is "no change from its
    own baseline". For a sweep, where every job has its own base (e.g. another guidance scale),
    so one shared base line would mix jobs. None when no row has a difference."""
    rows = [r for r in rows if r.get("group", "all") == "all" and r["model"] != baseline
            and r.get("diff") is not None]
    if not rows:
        return None
    by_step = has_step_lines(rows, line_of)
    rewards = list(dict.fromkeys(r["reward"] for r in rows))
    fig, panels = _panels(len(rewards), 4.5, 3.6)
    for (ax,), reward in zip(panels, rewards):
        mine = [r for r in rows if r["reward"] == reward]
        if by_step:
            for name, points in step_series(mine, line_of).items():
                points = list(points.values())
                ax.errorbar([p["step"] for p in points], [p["diff"] for p in points],
                            yerr=_yerr(points, "diff", "diff_low", "diff_high"), marker="o", capsize=3, label=name)
            ax.axhline(0.0, linestyle="--", color="grey")
            ax.set_xlabel("training step")
        else:
            _draw_differences(ax, mine, [line_of(r) for r in mine])
        ax.set_title(reward)
        ax.set_ylabel("minus own baseline, 95% CI")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
