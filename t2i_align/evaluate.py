"""Hydra entry point: python -m t2i_align.evaluate [model=...] [eval=tiny|standard] [checkpoint=...] [models=[...]]

Samples the same prompts and seeds from the base model and each listed model (cached on disk),
scores every image with the configured rewards, and writes results.{csv,json,md} (per model,
reward and prompt group: mean and 95% CI clustered by prompt; against the baseline the paired
difference, its Holm-adjusted p-value and the clustered win rate, ties half), grid.png,
reward_vs_step.png (a run with >= 2 checkpoints) or comparison.png (base vs aligned) and
report.html; optionally logs all of
it to wandb. With -m (Hydra multirun), the sweep's summary collects every job into one table.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from t2i_align.evaluation.run import model_specs, run_evaluation, sample_models, score_images  # noqa: F401
from t2i_align.cli import one_line_errors, quiet_libraries


def default_cache_dir(cfg: DictConfig, output_dir: str) -> str:
    """cache_dir, or <run dir>/images; in a multirun the sweep directory's images/, so every job
    of a sweep shares the base model's images."""
    if cfg.cache_dir:
        return cfg.cache_dir
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return str(Path(hydra_cfg.sweep.dir) / "images")
    return str(Path(output_dir) / "images")


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    output_dir = HydraConfig.get().runtime.output_dir
    cfg.cache_dir = default_cache_dir(cfg, output_dir)
    run_evaluation(cfg, output_dir)


if __name__ == "__main__":
    main()
