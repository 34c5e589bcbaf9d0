"""Log an evaluation to Weights & Biases: the results table, the grid, the plot and sample images.

Offline by default (wandb.mode=offline: files under <run dir>/wandb, `wandb sync` them later).
"""

from pathlib import Path

from .report import COLUMNS


def log_evaluation(run_dir: Path, rows: list[dict], gallery: list[dict], model_names: list[str],
                   project: str, mode: str, run_name: str | None, config: dict, max_samples: int = 16,
                   plot: Path | None = None) -> str:
    """One wandb run: table "results", image "grid" (and the plot, keyed by its file's stem:
    "reward_vs_step" or "comparison"), image panels
    "samples/<model>" (the first max_samples prompt/seed images of each model, same order) and a
    table "samples" of their scores. Returns the run's dir."""
    import wandb

    run = wandb.init(project=project, mode=mode, name=run_name, dir=str(run_dir), config=config,
                     job_type="evaluation")
    try:
        run.log({"results": wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in rows])})
        run.log({"grid": wandb.Image(str(run_dir / "grid.png"))})
        if plot is not None:
            run.log({Path(plot).stem: wandb.Image(str(plot))})
        # Images go in per-model image panels, not in a table: wandb drops images inside tables of
        # offline runs (wandb/wandb#4611); the samples table carries the scores.
        shown = gallery[:max_samples]
        for m in model_names:
            run.log({f"samples/{m}": [wandb.Image(str(item["images"][m]), caption=f"{item['prompt']} (seed {item['seed']})")
                                      for item in shown]})
        run.log({"samples": wandb.Table(
            columns=["prompt", "seed", "model", *(reward for reward in (shown[0]["scores"][model_names[0]] if shown else {}))],
            data=[[item["prompt"], item["seed"], m, *item["scores"][m].values()] for item in shown for m in model_names])})
        for r in rows:
            if r.get("group", "all") == "all":
                run.summary[f"{r['model']}/{r['reward']}"] = r["mean"]
                if r.get("win_rate") is not None:
                    run.summary[f"{r['model']}/{r['reward']}_win_rate"] = r["win_rate"]
                if r.get("diff") is not None:
                    run.summary[f"{r['model']}/{r['reward']}_diff"] = r["diff"]
                    run.summary[f"{r['model']}/{r['reward']}_p_adj"] = r["p_adj"]
        return run.dir
    finally:
        run.finish()
