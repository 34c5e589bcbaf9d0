"""Hydra entry point: python -m t2i_align.evaluate [model=...] [eval=tiny|standard] [models=[...]]

Samples the same prompts and seeds from the base model and each listed model (cached on disk),
scores every image with the configured rewards, and writes results.{csv,json,md} (mean and 95%
CI per model and reward; win rate against the baseline, ties half), grid.png and report.html.
"""

import gc
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from t2i_align.evaluation.grid_image import comparison_grid
from t2i_align.evaluation.metrics import mean_confidence_interval, win_rate
from t2i_align.evaluation.prompts import load_prompts
from t2i_align.evaluation.report import write_html, write_tables
from t2i_align.evaluation.rewards import load_reward
from t2i_align.evaluation.sampling import generate_cached, load_pipeline

log = logging.getLogger("t2i_align.evaluate")


def model_specs(base_path: str, extra: list) -> list[dict]:
    """[{"name", "unet", "lora"}], the base first; names must be unique."""
    specs = [{"name": "base", "unet": None, "lora": None}]
    for item in extra:
        item = dict(item)
        if "name" not in item:
            raise ValueError(f"models entry {item} needs a name")
        specs.append({"name": str(item["name"]), "unet": item.get("unet"), "lora": item.get("lora")})
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return specs


def sample_models(base_path: str, specs: list[dict], prompts: list[str], seeds: list[int], cache_dir,
                  ev: DictConfig, resolution: int) -> dict:
    """{model name: {(prompt, seed): image path}}, generating only what the cache lacks; one
    pipeline in memory at a time (fp16 on CUDA)."""
    dtype = torch.float16 if str(ev.device).startswith("cuda") else torch.float32
    images = {}
    for spec in specs:
        pipe = load_pipeline(base_path, unet=spec["unet"], lora=spec["lora"], device=ev.device, dtype=dtype)
        paths, made = generate_cached(pipe, spec["name"], prompts, seeds, cache_dir, steps=ev.steps,
                                      guidance_scale=ev.guidance_scale, resolution=resolution,
                                      batch_size=ev.batch_size)
        log.info("%s: %d images generated, %d from the cache", spec["name"], made, len(paths) - made)
        images[spec["name"]] = paths
        del pipe
        gc.collect()
    return images


def run_evaluation(cfg: DictConfig, run_dir) -> list[dict]:
    """Generate (cached), score, aggregate and write the outputs; return the result rows."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    ev = cfg.eval
    resolution = int(ev.resolution or cfg.model.resolution)
    prompts = load_prompts(ev.prompts, ev.num_prompts)
    seeds = [int(s) for s in ev.seeds]
    keys = [(p, s) for p in prompts for s in seeds]
    specs = model_specs(cfg.model.path, cfg.models)
    images = sample_models(cfg.model.path, specs, prompts, seeds, cfg.cache_dir, ev, resolution)

    scores = {}  # reward -> model -> tensor [len(keys)]
    for reward_name, kwargs in ev.rewards.items():
        reward = load_reward(reward_name, **OmegaConf.to_container(kwargs, resolve=True))
        scores[reward_name] = {}
        for spec in specs:
            opened = [Image.open(images[spec["name"]][k]).convert("RGB") for k in keys]
            scores[reward_name][spec["name"]] = reward(opened, [p for p, _ in keys])
        del reward
        gc.collect()

    rows = []
    baseline = ev.baseline
    if baseline not in images:
        raise ValueError(f"eval.baseline={baseline!r} is not one of the models {list(images)}")
    for reward_name, per_model in scores.items():
        for spec in specs:
            values = per_model[spec["name"]]
            mean, low, high = mean_confidence_interval(values)
            row = {"model": spec["name"], "reward": reward_name, "mean": mean, "ci_low": low, "ci_high": high,
                   "win_rate": None, "win_low": None, "win_high": None, "n": len(values)}
            if spec["name"] != baseline:
                row["win_rate"], row["win_low"], row["win_high"] = win_rate(values, per_model[baseline])
            rows.append(row)
    write_tables(rows, run_dir)

    names = [s["name"] for s in specs]
    grid_keys = [(p, seeds[0]) for p in prompts[: ev.grid_prompts]]
    first_reward = next(iter(scores), None)
    columns = [f"{m} ({first_reward})" if i == 0 and first_reward else m for i, m in enumerate(names)]
    grid = comparison_grid(
        [[Image.open(images[m][k]) for m in names] for k in grid_keys], [p for p, _ in grid_keys], columns,
        scores=None if first_reward is None else
        [[scores[first_reward][m][keys.index(k)].item() for m in names] for k in grid_keys])
    grid.save(run_dir / "grid.png")
    gallery = [{"prompt": p, "seed": s, "images": {m: images[m][(p, s)] for m in names},
                "scores": {m: {r: scores[r][m][keys.index((p, s))].item() for r in scores} for m in names}}
               for p, s in keys]
    write_html(run_dir, rows, gallery, names, list(scores))
    log.info("wrote results.csv / .json / .md, grid.png and report.html to %s", run_dir)
    return rows


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("t2i_align").setLevel(logging.INFO)
    run_evaluation(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
