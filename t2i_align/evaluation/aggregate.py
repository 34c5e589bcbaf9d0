"""From per-image scores to result rows, and the reward-vs-training-step plot.

A row: model, reward, group ("all", or a benchmark group such as an HPSv2 style), step (the
model's training step; None for the base), mean and 95% CI, win rate against the baseline model
(per prompt and seed, ties half) and its Wilson CI, n.
"""

from pathlib import Path

import torch

from .metrics import mean_confidence_interval, win_rate


def result_rows(scores: dict, groups: list[str], models: list[dict], baseline: str) -> list[dict]:
    """scores: {reward: {model name: tensor [K]}} over the same K (prompt, seed) keys, in order;
    groups: the group of each key ("" when the prompt set has none); models: [{"name", "step"}].

    Rows for every (reward, group, model): group "all" first, then one per group when the keys
    come from more than one group."""
    names = [m["name"] for m in models]
    if baseline not in names:
        raise ValueError(f"eval.baseline={baseline!r} is not one of the models {names}")
    distinct = list(dict.fromkeys(groups))
    selections = [("all", torch.ones(len(groups), dtype=torch.bool))]
    if len(distinct) > 1:
        selections += [(g, torch.tensor([x == g for x in groups])) for g in distinct]
    rows = []
    for reward, per_model in scores.items():
        for group, mask in selections:
            for model in models:
                values = per_model[model["name"]][mask]
                mean, low, high = mean_confidence_interval(values)
                row = {"model": model["name"], "reward": reward, "group": group, "step": model.get("step"),
                       "mean": mean, "ci_low": low, "ci_high": high,
                       "win_rate": None, "win_low": None, "win_high": None, "n": int(values.numel())}
                if model["name"] != baseline:
                    row["win_rate"], row["win_low"], row["win_high"] = win_rate(values, per_model[baseline][mask])
                rows.append(row)
    return rows


def series_name(model_name: str) -> str:
    """"run@step" -> "run": the line a checkpoint belongs to in the reward-vs-step plot."""
    return model_name.rsplit("@", 1)[0]


def plot_reward_vs_step(rows: list[dict], out: Path, baseline: str = "base") -> Path | None:
    """One panel per reward: mean reward (95% CI as error bars) against training step, a line per
    run, the baseline as a dashed horizontal line. Only group "all" rows. None (nothing written)
    when no row has a step."""
    rows = [r for r in rows if r.get("group", "all") == "all"]
    if not any(r.get("step") is not None for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(dict.fromkeys(r["reward"] for r in rows))
    fig, axes = plt.subplots(1, len(rewards), figsize=(4.5 * len(rewards), 3.6), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        mine = [r for r in rows if r["reward"] == reward]
        for name in dict.fromkeys(series_name(r["model"]) for r in mine if r.get("step") is not None):
            points = sorted({r["step"]: r for r in mine
                             if r.get("step") is not None and series_name(r["model"]) == name}.values(),
                            key=lambda r: r["step"])
            ax.errorbar([p["step"] for p in points], [p["mean"] for p in points],
                        yerr=[[p["mean"] - p["ci_low"] for p in points], [p["ci_high"] - p["mean"] for p in points]],
                        marker="o", capsize=3, label=name)
        base = [r for r in mine if r["model"] == baseline]
        if base:
            ax.axhline(base[0]["mean"], linestyle="--", color="grey", label=baseline)
        ax.set_title(reward)
        ax.set_xlabel("training step")
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
