"""The toy method study: every method, a small grid, several training seeds, two levels of
reference mismatch; resumable, with a progress bar over the runs.

    python scripts/toy_study.py [--out outputs/toy_study] [--jobs 2] [--seeds 0,1,2] [--levels low,high]

One *run* = (mismatch level, method, setting, training seed): ``+exp=toy_<method>`` with the
setting's learning rate / beta, checkpoints every ``CURVE_EVERY`` steps, then
- the validation prompts (18 of the 36 held-out prompts x 2 sampling seeds) at every checkpoint:
  the learning curve, and the final value used to choose the setting;
- the test prompts (the other 18 x 4 seeds) at the final step only: the reported numbers;
- s/step (median of the logged step times after the first 5) and the peak RSS while training
  (VmHWM, reset just before training starts; it includes the loaded models and the data).
Each run is its own process and writes ``runs/<id>/result.json`` atomically when done; a killed
study reruns only unfinished runs, and a killed training resumes from its last checkpoint
(``trainer.resume=latest``). Checkpoint weights are deleted once evaluated.

Per-image results (prompt, sampling seed, neon / colour / shape) are stored, so the analysis
(t2i_align/toy/study_report.py) can cluster by prompt and pair with the base.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
METHODS = ("sft", "mapo", "dpo", "dcpo", "inpo")
# The grid: learning rate for every method; beta for the DPO family, with the papers' values
# (Diffusion-DPO and InPO-SDXL 5000, DCPO 500) next to the toy default 5.
GRID = {
    "sft": [{"lr": 2e-5}, {"lr": 5e-5}],
    "mapo": [{"lr": 2e-5}, {"lr": 5e-5}],
    "dpo": [{"lr": 2e-5, "beta": 5}, {"lr": 5e-5, "beta": 5}, {"lr": 2e-5, "beta": 5000}],
    "dcpo": [{"lr": 2e-5, "beta": 5}, {"lr": 2e-5, "beta": 500}],
    "inpo": [{"lr": 2e-5, "beta": 5}, {"lr": 2e-5, "beta": 5000}],
}
# toy_sd3 (rectified flow): betas do not transfer from the UNet families (velocity errors, another
# scale), so the DPO family's beta is calibrated here over four decades (README: the toy flow world).
GRID_FLOW = {
    "sft": [{"lr": 2e-5}, {"lr": 5e-5}],
    "mapo": [{"lr": 2e-5}, {"lr": 5e-5}],
    "dpo": [{"lr": 2e-5, "beta": b} for b in (0.5, 1, 2, 5, 50, 5000)] + [{"lr": 1e-5, "beta": b} for b in (2, 5)],
    "dcpo": [{"lr": 2e-5, "beta": b} for b in (1, 5, 500)],
    "inpo": [{"lr": 2e-5, "beta": b} for b in (1, 5, 5000)],
}
FLOW_SEEDS = (0, 1)  # the flow study's default training seeds (--seeds)
TOY_MODELS = {"toy_sdxl": "toy:sdxl", "toy_sd3": "toy:sd3"}  # conf/model name -> model path
SEEDS = (0, 1, 2)
STEPS = 200  # the embedded default trains 300; 200 keeps the 66-run study near an hour on 2 cores
CURVE_EVERY = 50
VAL_SEEDS = (0, 1)
TEST_SEEDS = (0, 1, 2, 3)
SAMPLING = {"steps": 20, "guidance_scale": 7.0}  # as conf/post_eval/toy.yaml
RESULT_VERSION = 1


def setting_name(setting: dict) -> str:
    return "_".join(f"{k}{v:g}" for k, v in sorted(setting.items()))


def plan(levels=("low", "high"), methods=METHODS, seeds=SEEDS, model: str = "toy_sdxl") -> list[dict]:
    """Every run of the study, in the order they run: seed-major, so a study stopped early has every
    method and setting at the first seeds rather than some methods at all seeds. toy_sd3 uses
    GRID_FLOW (the beta calibration), toy_sdxl GRID."""
    grid = GRID_FLOW if model == "toy_sd3" else GRID
    runs = []
    for seed in seeds:
        for level in levels:
            for method in methods:
                for setting in grid[method]:
                    runs.append({"id": f"{level}-{method}-{setting_name(setting)}-s{seed}", "level": level,
                                 "method": method, "setting": setting, "seed": seed})
    return runs


def split_prompts() -> dict[str, list[str]]:
    """The 36 held-out toy prompts split in two disjoint halves by a fixed shuffle: validation (model
    selection, learning curves) and test (reported)."""
    from t2i_align.toy.world import plain_prompts

    prompts = plain_prompts(36, seed=2024, held_out=True)
    return {"val": sorted(prompts[:18]), "test": sorted(prompts[18:])}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def run_overrides(run: dict, data_paths: dict, steps: int, model: str = "toy_sdxl") -> list[str]:
    method, setting = run["method"], run["setting"]
    overrides = [f"+exp=toy_{method}", f"model={model}", f"trainer.seed={run['seed']}", f"trainer.lr={setting['lr']}",
                 f"trainer.max_steps={steps}", f"trainer.checkpoint_every={CURVE_EVERY}",
                 f"trainer.keep_last={steps // CURVE_EVERY + 1}", "post_eval=none"]
    if "beta" in setting:
        overrides.append(f"method.loss.beta={setting['beta']}")
    if data_paths.get(run["level"]):
        overrides.append(f"data.path={data_paths[run['level']]}")
    return overrides


def sample_metrics(model_path: str, unet: str | None, prompts: list[str], seeds, batch_size: int = 36) -> list[dict]:
    """[{prompt, seed, neon, colour, shape}] for every (prompt, seed): one image each, its own
    torch.Generator (the same starting noise for every model), scored by the toy rewards."""
    import torch

    from t2i_align.evaluation.rewards import load_reward
    from t2i_align.evaluation.sampling import load_pipeline
    from t2i_align.families import pipeline_call_kwargs

    pipe = load_pipeline(model_path, unet=unet)
    keys = [(p, s) for p in prompts for s in seeds]
    images = []
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        out = pipe(prompt=[p for p, _ in chunk], num_inference_steps=SAMPLING["steps"],
                   guidance_scale=SAMPLING["guidance_scale"], height=32, width=32,
                   generator=[torch.Generator().manual_seed(s) for _, s in chunk], **pipeline_call_kwargs(pipe))
        images.extend(out.images)
    names = {"neon": "toy_style", "colour": "toy_colour", "shape": "toy_shape"}
    scores = {k: load_reward(v)(images, [p for p, _ in keys]).tolist() for k, v in names.items()}
    return [{"prompt": p, "seed": s, **{k: scores[k][i] for k in names}} for i, (p, s) in enumerate(keys)]


def reset_peak_rss() -> None:
    """Reset the process's peak RSS (Linux >= 4.0: "5" into /proc/self/clear_refs), so the peak read
    after training is training's, not that of the imports before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (VmHWM), in MB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def run_one(run: dict, out: Path, data_paths: dict, model_path: str, steps: int, model: str = "toy_sdxl") -> dict:
    """Train one run (resuming its own checkpoints), evaluate its curve and its final model."""
    import statistics

    from t2i_align.training.recipe import run_training

    run_dir = out / "runs" / run["id"]
    train_dir = run_dir / "train"
    overrides = run_overrides(run, data_paths, steps, model)
    if (train_dir / "checkpoints").is_dir():
        overrides.append("trainer.resume=latest")
    cfg = compose(overrides)
    reset_peak_rss()
    started = time.time()
    final = run_training(cfg, train_dir)
    train_seconds = time.time() - started
    peak_mb = peak_rss_mb()
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["step_time"] for r in records if r["step"] > 5]
    prompts = split_prompts()
    curve = {}
    for step in range(CURVE_EVERY, steps, CURVE_EVERY):
        ckpt = train_dir / "checkpoints" / f"step_{step}"
        if ckpt.is_dir():
            curve[step] = sample_metrics(model_path, str(ckpt), prompts["val"], VAL_SEEDS)
    val = sample_metrics(model_path, str(final), prompts["val"], VAL_SEEDS)
    curve[steps] = val
    result = {"version": RESULT_VERSION, **run, "steps": steps, "overrides": overrides,
              "train_seconds": train_seconds, "s_per_step": statistics.median(step_times) if step_times else None,
              "peak_rss_mb": peak_mb, "val": val,
              "test": sample_metrics(model_path, str(final), prompts["test"], TEST_SEEDS),
              "curve": {str(k): v for k, v in curve.items()},
              "final_loss": records[-1]["loss"] if records else None}
    _write_json(run_dir / "result.json", result)
    shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)  # evaluated; final/ stays
    return result


def prepare(out: Path, model_path: str, levels, model: str = "toy_sdxl") -> dict:
    """The data of each level (built once), their measured mismatch (DDPM denoising errors: measured
    only for toy_sdxl's two levels), and the base's metrics."""
    from t2i_align.data.builders.ensure import ensure_built
    from t2i_align.toy.mismatch import build_high_mismatch, denoising_gap

    out.mkdir(parents=True, exist_ok=True)
    cfg = compose(["+exp=toy_mapo", f"model={model}"])
    low = ensure_built(cfg.data.build, cfg.model, list(cfg.data.build_overrides))
    paths = {"low": None, "high": str(build_high_mismatch(low, out / "data" / "high")) if "high" in levels else None}
    info_path = out / "prepared.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "high" not in levels:
        info.setdefault("mismatch", {})
    if "mismatch" not in info:
        info["mismatch"] = {level: {
            "plain_caption": denoising_gap(model_path, Path(low if level == "low" else paths["high"])),
            "neon_caption": denoising_gap(model_path, Path(low if level == "low" else paths["high"]),
                                          caption_prefix="neon style: ")} for level in ("low", "high")}
    if "base" not in info:
        prompts = split_prompts()
        info["base"] = {"val": sample_metrics(model_path, None, prompts["val"], VAL_SEEDS),
                        "test": sample_metrics(model_path, None, prompts["test"], TEST_SEEDS)}
        info["prompts"] = prompts
    info["data"] = {"low": str(low), "high": paths["high"]}
    _write_json(info_path, info)
    return {level: paths[level] for level in levels}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy_sdxl", choices=sorted(TOY_MODELS),
                        help="toy_sd3: the flow study (GRID_FLOW, the beta calibration; level low only)")
    parser.add_argument("--out", default=None, help="default results/toy_study (toy_sdxl), results/toy_study_sd3")
    parser.add_argument("--levels", default=None, help="default low,high (toy_sdxl), low (toy_sd3)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=None, help="default 0,1,2 (toy_sdxl), 0,1 (toy_sd3)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads torch threads)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true", help="run only; do not write the report")
    args = parser.parse_args(argv)
    flow = args.model == "toy_sd3"
    args.levels = args.levels or ("low" if flow else "low,high")
    args.seeds = args.seeds or ",".join(map(str, FLOW_SEEDS if flow else SEEDS))
    out = Path(args.out or ROOT / "results" / ("toy_study_sd3" if flow else "toy_study"))
    model_path = TOY_MODELS[args.model]
    levels, methods = args.levels.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = plan(levels, methods, seeds, args.model)

    if args.run_one:  # a child process: one run
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        data_paths = json.loads((out / "prepared.json").read_text())["data"]
        data_paths["low"] = None  # the preset's own build (data.build)
        run_one(next(r for r in runs if r["id"] == args.run_one), out, data_paths, model_path, args.steps, args.model)
        return

    from tqdm.auto import tqdm

    prepare(out, model_path, levels, args.model)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    pending = [r for r in runs if not (out / "runs" / r["id"] / "result.json").is_file()]
    bar = tqdm(total=len(runs), initial=len(runs) - len(pending), desc="toy study runs", unit="run")
    running: list[tuple[subprocess.Popen, dict]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            run = pending.pop(0)
            log = out / "runs" / run["id"] / "log.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "t2i_align.toy.study", "--model", args.model, "--out", str(out),
                   "--levels", args.levels,
                   "--methods", args.methods, "--seeds", args.seeds, "--steps", str(args.steps),
                   "--threads", str(threads), "--run-one", run["id"]]
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT),
                            run))
        time.sleep(2)
        for proc, run in list(running):
            if proc.poll() is not None:
                running.remove((proc, run))
                if proc.returncode != 0:
                    failed.append(run["id"])
                    tqdm.write(f"run {run['id']} failed (exit {proc.returncode}); see {out / 'runs' / run['id'] / 'log.txt'}")
                bar.update(1)
    bar.close()
    if not args.no_report:
        from t2i_align.toy.study_report import write_report

        print(write_report(out))
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {failed}")


if __name__ == "__main__":
    main()
