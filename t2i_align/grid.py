"""Hydra entry point: python -m t2i_align.grid [model=...] [models=[...]] [cache_dir=...]

A labelled PNG (rows = prompts, columns = models, base first) with the same seed in every
column, optionally with a reward score under each image. Images come from the evaluation
cache when present, so a grid after an evaluation costs no sampling.
"""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from t2i_align.evaluation.run import model_specs, sample_models
from t2i_align.evaluation.grid_image import comparison_grid
from t2i_align.evaluation.prompts import load_prompts
from t2i_align.evaluation.rewards import load_reward
from t2i_align.errors import InputError
from t2i_align.cli import one_line_errors, quiet_libraries

log = logging.getLogger("t2i_align.grid")


def make_grid(cfg: DictConfig, run_dir) -> Path:
    """Generate what the cache lacks, compose the grid, save <run dir>/grid.png."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ev = cfg.eval
    prompts = load_prompts(ev.prompts, cfg.num_prompts, ev.get("prompt_subset"), ev.get("prompt_split", "test_unique"))
    resolution = int(ev.resolution or cfg.model.resolution)
    specs = model_specs(cfg.model.path, cfg.models, cfg.get("checkpoint"))
    paths = sample_models(cfg.model.path, specs, prompts, [cfg.seed], cfg.cache_dir, ev, resolution,
                          model_cfg=cfg.model)
    images = {m: [Image.open(paths[m][(p, cfg.seed)]).convert("RGB") for p in prompts] for m in paths}
    names = [s["name"] for s in specs]
    table = [[images[m][i] for m in names] for i in range(len(prompts))]
    scores = None
    if cfg.score_with:
        if cfg.score_with not in ev.rewards:
            raise InputError(f"score_with={cfg.score_with!r} is not in eval.rewards ({list(ev.rewards)})")
        reward = load_reward(cfg.score_with, **OmegaConf.to_container(ev.rewards[cfg.score_with], resolve=True))
        per_model = {m: reward(images[m], prompts).tolist() for m in names}
        scores = [[per_model[m][i] for m in names] for i in range(len(prompts))]
    columns = names if not cfg.score_with else [f"{m} ({cfg.score_with})" if i == 0 else m
                                                 for i, m in enumerate(names)]
    out = run_dir / "grid.png"
    comparison_grid(table, prompts, columns, scores=scores).save(out)
    log.info("wrote %s", out)
    return out


@hydra.main(config_path="../conf", config_name="grid", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    make_grid(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
