"""Evaluate base vs the just-trained model right after training (post_eval config group)."""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("t2i_align.post_eval")


def evaluate_after_training(cfg: DictConfig, final: Path, run_dir: Path) -> list[dict] | None:
    """Run the evaluation of cfg.post_eval on base vs `final`, into <run dir>/eval/; None when
    disabled or configured for another model."""
    post = cfg.get("post_eval")
    if not post or not post.enabled:
        return None
    when = post.get("when_model")
    models = [when] if isinstance(when, str) else list(when or [])
    if models and cfg.model.name not in models:
        log.info("post_eval is for model %s, not %s: skipped", " / ".join(models), cfg.model.name)
        return None
    from t2i_align.evaluation.run import run_evaluation

    out = Path(run_dir) / "eval"
    eval_cfg = OmegaConf.create({
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "eval": OmegaConf.to_container(post.eval, resolve=True),
        "models": [{"name": cfg.method.name, "checkpoint": str(final)}],
        "checkpoint": None, "cache_dir": str(out / "images"), "wandb": {"enabled": False}})
    rows = run_evaluation(eval_cfg, out)
    for r in rows:
        if r["group"] == "all":
            line = "%-8s %-11s %.3f [%.3f, %.3f]" % (r["model"], r["reward"], r["mean"], r["ci_low"], r["ci_high"])
            if r.get("diff") is not None:
                line += "  diff %+.3f [%.3f, %.3f], p_adj %.4f" % (r["diff"], r["diff_low"], r["diff_high"], r["p_adj"])
            log.info("%s%s", line, " (used on the training data)" if r.get("used_in_training_data") else "")
    return rows
