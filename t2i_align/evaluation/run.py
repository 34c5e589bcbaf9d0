"""Evaluate models against a base: sample (cached) -> score -> aggregate -> tables, grid, report.

The library side of the evaluate entry point (t2i_align/evaluate.py, which adds Hydra and the
multirun image cache) and of the post-training evaluation (training/post_eval.py).
"""

import gc
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from t2i_align.evaluation.aggregate import plot_results, result_rows
from t2i_align.evaluation.checkpoints import resolve_checkpoint
from t2i_align.evaluation.grid_image import comparison_grid
from t2i_align.evaluation.prompts import load_prompt_set
from t2i_align.evaluation.report import write_html, write_tables
from t2i_align.evaluation.rewards import load_reward
from t2i_align.evaluation.sampling import (cached_images, generate_cached, load_pipeline, model_cache_key,
                                           pipeline_sources)
from t2i_align.errors import InputError

log = logging.getLogger("t2i_align.evaluate")


def model_specs(base_path: str, extra: list, checkpoint: str | None = None) -> list[dict]:
    """[{"name", "unet", "lora", "step"}], the base first; names must be unique.

    extra: [{name?, lora | unet | checkpoint, step?, lora_scale?}]; a `checkpoint` (run dir, final/,
    checkpoints/step_N, LoRA file) is resolved by resolve_checkpoint, which also names it
    "<run>@<step>" unless a name is given. checkpoint: one more such path (the sweep key).
    lora_scale (default 1) scales a LoRA's update when sampling (it is part of the cache key)."""
    specs = [{"name": "base", "unet": None, "lora": None, "step": None}]
    items = [dict(item) for item in extra] + ([{"checkpoint": checkpoint}] if checkpoint else [])
    for item in items:
        if item.get("checkpoint"):
            spec = resolve_checkpoint(item["checkpoint"])
            spec["name"] = str(item.get("name") or spec["name"])
        elif "name" not in item:
            raise InputError(f"models entry {item} needs a name (or a checkpoint to name it after)")
        else:
            spec = {"name": str(item["name"]), "unet": item.get("unet"), "lora": item.get("lora"),
                    "step": item.get("step")}
        if item.get("lora_scale") is not None:
            spec["lora_scale"] = float(item["lora_scale"])
        specs.append(spec)
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique, got {names}")
    return specs


def sample_models(base_path: str, specs: list[dict], prompts: list[str], seeds: list[int], cache_dir,
                  ev: DictConfig, resolution: int, model_cfg=None) -> dict:
    """{model name: {(prompt, seed): image path}}, generating only what the cache lacks; one
    pipeline in memory at a time (fp16 on CUDA).

    Images are cached by model_cache_key (weights by content, sampling settings, dtype), never
    by name, so a reused name with new weights regenerates. model_cfg (cfg.model) adds the base's
    revision, variant, vae_path and unet_path. A model whose images are all cached is not loaded."""
    dtype = torch.float16 if str(ev.device).startswith("cuda") else torch.float32
    base = {**({} if model_cfg is None else dict(model_cfg)), "path": base_path}
    settings = {"steps": ev.steps, "guidance_scale": ev.guidance_scale, "resolution": resolution,
                "negative_prompt": ev.get("negative_prompt"), "dtype": dtype, "device": ev.device}
    images = {}
    for spec in specs:
        key, pipe = model_cache_key(spec, base, settings), None
        if cached_images(cache_dir, key, prompts, seeds)[1]:
            pipe = load_pipeline(**pipeline_sources(spec, base), device=ev.device, dtype=dtype)
            key = model_cache_key(spec, base, settings)  # a hub model's snapshot commit is known once loaded
        paths, made = generate_cached(pipe, key, prompts, seeds, cache_dir, batch_size=ev.batch_size)
        log.info("%s: %d images generated, %d from the cache (%s)", spec["name"], made, len(paths) - made,
                 key.folder(cache_dir))
        images[spec["name"]] = paths
        del pipe
        gc.collect()
    return images


def score_images(reward_configs, specs, images, keys) -> dict:
    """{reward: {model: float32 [len(keys)]}}, one reward model in memory at a time."""
    scores = {}
    for reward_name, kwargs in reward_configs.items():
        reward = load_reward(reward_name, **OmegaConf.to_container(kwargs, resolve=True))
        scores[reward_name] = {}
        for spec in specs:
            opened = [Image.open(images[spec["name"]][k]).convert("RGB") for k in keys]
            scores[reward_name][spec["name"]] = reward(opened, [p for p, _ in keys])
        del reward
        gc.collect()
    return scores


def run_evaluation(cfg: DictConfig, run_dir) -> list[dict]:
    """Generate (cached), score, aggregate and write the outputs; return the result rows."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    ev = cfg.eval
    resolution = int(ev.resolution or cfg.model.resolution)
    prompt_set = load_prompt_set(ev.prompts, ev.num_prompts, ev.get("prompt_subset"), ev.get("prompt_split", "test_unique"))
    prompts = [p for p, _ in prompt_set]
    seeds = [int(s) for s in ev.seeds]
    keys = [(p, s) for p in prompts for s in seeds]
    groups = [g for _, g in prompt_set for _ in seeds]
    specs = model_specs(cfg.model.path, cfg.models, cfg.get("checkpoint"))
    if ev.baseline not in [s["name"] for s in specs]:
        raise InputError(f"eval.baseline={ev.baseline!r} is not one of the models {[s['name'] for s in specs]}")
    cache_dir = cfg.cache_dir or run_dir / "images"
    images = sample_models(cfg.model.path, specs, prompts, seeds, cache_dir, ev, resolution, model_cfg=cfg.model)
    scores = score_images(ev.rewards, specs, images, keys)
    rows = result_rows(scores, groups, specs, ev.baseline, keys=keys, correction=ev.get("correction", "holm"),
                       data_rewards=list(ev.get("data_rewards") or []))
    write_tables(rows, run_dir)
    plot = plot_results(rows, run_dir, ev.baseline)

    names = [s["name"] for s in specs]
    index = {k: i for i, k in enumerate(keys)}
    grid_keys = [(p, seeds[0]) for p in prompts[: ev.grid_prompts]]
    first_reward = next(iter(scores), None)
    columns = [f"{m} ({first_reward})" if i == 0 and first_reward else m for i, m in enumerate(names)]
    grid = comparison_grid(
        [[Image.open(images[m][k]) for m in names] for k in grid_keys], [p for p, _ in grid_keys], columns,
        scores=None if first_reward is None else
        [[scores[first_reward][m][index[k]].item() for m in names] for k in grid_keys])
    grid.save(run_dir / "grid.png")
    gallery = [{"prompt": p, "seed": s, "images": {m: images[m][(p, s)] for m in names},
                "scores": {m: {r: scores[r][m][index[(p, s)]].item() for r in scores} for m in names}}
               for p, s in keys]
    write_html(run_dir, rows, gallery, names, list(scores), plot=plot)
    if cfg.get("wandb") and cfg.wandb.enabled:
        from t2i_align.evaluation.wandb_log import log_evaluation

        log_evaluation(run_dir, rows, gallery, names, project=cfg.wandb.project, mode=cfg.wandb.mode,
                       run_name=cfg.wandb.get("name"), config=OmegaConf.to_container(cfg, resolve=True),
                       max_samples=cfg.wandb.max_samples, plot=plot)
    log.info("wrote results.csv / .json / .md, grid.png and report.html to %s", run_dir)
    return rows
