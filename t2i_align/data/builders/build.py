"""Build a dataset preset (cfg.dataset) with a base model: plan, shards, card, build_info.json.

The library side of the build_dataset entry point (t2i_align/build_dataset.py, which adds Hydra)
and of data.build=<preset> on first use (builders/ensure.py). Resumable, deterministic, shards
spread over processes.
"""

import hashlib
import json
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from t2i_align.data.builders.card import write_card
from t2i_align.data.builders.shards import check_plan, run_shards, shard_ranges, shard_stats
from t2i_align.errors import InputError

log = logging.getLogger("t2i_align.build_dataset")


def _process_state():
    """accelerate's process state. Without CUDA, cpu=True lets a multi-process launch
    (torchrun --nproc_per_node N) form a gloo group instead of N independent runs."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _shared_out_dir(cfg: DictConfig, run_dir: Path, state) -> Path:
    """The output folder, the same on every process (each composed its own ${now:...} run_dir)."""
    from accelerate.utils import broadcast_object_list

    out = Path(cfg.output_dir) if cfg.output_dir else Path(run_dir) / "dataset"
    if state.num_processes > 1:
        out = Path(broadcast_object_list([str(out)])[0])
    return out


def _plan_and_rows_prefix_pair(cfg: DictConfig, device):
    """(plan, number of items, make_rows, schema, title, description) for a prefix-pair build."""
    from t2i_align.data.builders.prefix_pairs import PAIR_SCHEMA, prefix_pair_rows
    from t2i_align.data.builders.prompt_source import build_prompts
    from t2i_align.evaluation.sampling import load_pipeline, text_options_of

    ds = cfg.dataset
    resolution = int(ds.resolution or cfg.model.resolution)
    prompts, counts = build_prompts(ds.prompts, ds.prompt_split, ds.exclude_words, ds.num_prompts, ds.min_words)
    log.info("prompts: %s", counts)
    per_prompt = int(ds.get("pairs_per_prompt", 1))
    items = [p for p in prompts for _ in range(per_prompt)]  # pairs of one prompt get different seeds
    plan = {"builder": "prefix_pair", "name": ds.name, "model": cfg.model.path, "vae": cfg.model.get("vae_path"),
            "chosen_prefix": ds.chosen_prefix, "rejected_prefix": ds.rejected_prefix, "prompts_source": ds.prompts,
            "num_prompts": len(prompts), "pairs_per_prompt": per_prompt, "prompt_counts": counts,
            "prompts_sha": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16],
            "seed": ds.seed, "steps": ds.steps, "guidance_scale": ds.guidance_scale, "resolution": resolution,
            "negative_prompt": ds.negative_prompt, "shard_size": ds.shard_size, "image_format": ds.image_format,
            "filter": OmegaConf.to_container(ds.filter, resolve=True)}
    if text_options_of(cfg.model):  # T5 settings change the images; absent for UNet families (plans unchanged)
        plan["text_options"] = text_options_of(cfg.model)
    cache = {}

    def make_rows(start, end):
        if "pipe" not in cache:  # loaded only when a shard is actually missing
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
            cache["pipe"] = load_pipeline(cfg.model.path, vae=cfg.model.get("vae_path"), device=device, dtype=dtype,
                                          family=cfg.model.get("family"), text_options=text_options_of(cfg.model))
            cache["reward"] = None
            if ds.filter.reward:
                from t2i_align.evaluation.rewards import load_reward

                cache["reward"] = load_reward(ds.filter.reward, **OmegaConf.to_container(ds.filter.args, resolve=True))
        return prefix_pair_rows(cache["pipe"], items[start:end], list(range(start, end)), ds.chosen_prefix,
                                ds.rejected_prefix, ds.seed, ds.steps, ds.guidance_scale, resolution, cfg.model.path,
                                batch_size=ds.batch_size, image_format=ds.image_format, reward=cache["reward"],
                                margin=ds.filter.margin, negative_prompt=ds.negative_prompt,
                                pairs_per_prompt=per_prompt)

    return plan, len(items), make_rows, PAIR_SCHEMA, ds.name, ds.description


def check_enough_pairs(out_dir: Path, stats: dict, plan: dict, min_pairs: int) -> None:
    """Refuse a build that kept fewer than `min_pairs` pairs (say how many were generated, what
    removed them and what to do); it is then not recorded as finished (no build_info.json)."""
    if stats["rows"] >= min_pairs:
        return
    removed = stats["planned"] - stats["rows"]
    filt = plan.get("filter") or {}
    if filt.get("reward"):
        why = (f"the reward filter removed {removed}: dataset.filter.reward={filt['reward']} keeps a pair only when "
               f"the chosen image beats the rejected one by dataset.filter.margin={filt.get('margin')}")
        fix = ("use a base model whose chosen and rejected prompts really differ (a pretrained model, not a random "
               "one), lower dataset.filter.margin, turn the filter off (dataset.filter.reward=null), or build more "
               "pairs (dataset.num_prompts / dataset.pairs_per_prompt)")
    else:
        why = f"{removed} were not kept"
        fix = "build more pairs (dataset.num_prompts / dataset.pairs_per_prompt)"
    raise InputError(f"{out_dir}: the build kept {stats['rows']} of {stats['planned']} generated pairs, fewer than "
                     f"the {min_pairs} needed; {why}. It is not recorded as a finished dataset. To fix: {fix}")


def build(cfg: DictConfig, run_dir, min_pairs: int = 1) -> Path:
    """Build (or finish) the dataset configured under cfg.dataset; return its folder. A build that
    keeps fewer than `min_pairs` pairs (cfg.min_pairs when set) fails with check_enough_pairs."""
    if "dataset" not in cfg:
        raise InputError("choose a dataset: +dataset=pick_style_cartoon | pick_style_pixel_art | pick_safety | "
                         "prefix_pair | pick_double_caption")
    state = _process_state()
    out_dir = _shared_out_dir(cfg, run_dir, state)
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    from t2i_align.data.builders.double_caption_build import plan_and_rows_double_caption

    builders = {"prefix_pair": _plan_and_rows_prefix_pair, "double_caption": plan_and_rows_double_caption}
    if cfg.dataset.builder not in builders:
        raise InputError(f"unknown dataset.builder {cfg.dataset.builder!r}; known: {sorted(builders)}")
    plan, num_items, make_rows, schema, title, description = builders[cfg.dataset.builder](cfg, device)

    if state.is_main_process:
        check_plan(out_dir, plan, is_main=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        check_plan(out_dir, plan, is_main=False)
    mine = sum(end - start for k, (start, end) in enumerate(shard_ranges(num_items, plan["shard_size"]))
               if k % state.num_processes == state.process_index)
    with tqdm(total=mine, desc=f"build {plan['name']}", unit="item", disable=not state.is_main_process) as bar:
        counts = run_shards(out_dir, num_items, plan["shard_size"], make_rows, schema, rank=state.process_index,
                            world_size=state.num_processes, progress=bar.update)
    log.info("process %d: %d shards made, %d already finished", state.process_index, counts["made"], counts["skipped"])
    state.wait_for_everyone()
    stats = shard_stats(out_dir)
    check_enough_pairs(out_dir, stats, plan, max(min_pairs, int(cfg.get("min_pairs") or 1)))
    if state.is_main_process:
        command = "python -m t2i_align.build_dataset " + " ".join(sys.argv[1:])
        write_card(out_dir, title, description, plan, stats, schema.names, command)
        (out_dir / "build_info.json").write_text(json.dumps({"plan": plan, **stats}, indent=2, default=str))
        if cfg.save_to_disk:
            import datasets

            files = sorted(str(p) for p in (out_dir / "data").glob("train-*.parquet"))
            datasets.Dataset.from_parquet(files, split="train").save_to_disk(str(out_dir / "save_to_disk"))
        log.info("%s: %d rows of %d planned in %d shards", out_dir, stats["rows"], stats["planned"], stats["shards"])
    state.wait_for_everyone()
    return out_dir
