"""Evaluating what training wrote: run dirs, final/, checkpoints/step_N; wandb logging; a Hydra
multirun sweep over checkpoints with its summary table and reward-vs-step plot."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from t2i_align.evaluate import run_evaluation
from t2i_align.evaluation.checkpoints import resolve_checkpoint
from t2i_align.evaluation.sampling import cache_folders
from tests.evaluation.test_evaluate import eval_cfg
from tests.training.helpers import train

ROOT = Path(__file__).resolve().parents[2]


LORA_RUN = ["trainer.lora.enabled=true", "trainer.lr=5e-2", "trainer.checkpoint_every=2"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny SDXL MaPO LoRA run of 6 steps with checkpoints at steps 2 and 4 (final/ at 6)."""
    return train(tmp_path_factory.mktemp("lora_run") / "mapo", LORA_RUN + ["trainer.max_steps=6"])


def test_resolve_checkpoint_forms(lora_run, tmp_path):
    run_dir, final = lora_run
    assert resolve_checkpoint(run_dir) == {"name": "mapo@6", "unet": None, "lora": str(final), "step": 6}
    step2 = resolve_checkpoint(run_dir / "checkpoints" / "step_2")
    assert step2 == {"name": "mapo@2", "unet": None, "lora": str(run_dir / "checkpoints" / "step_2"), "step": 2}
    assert resolve_checkpoint(final / "pytorch_lora_weights.safetensors")["lora"].endswith(".safetensors")
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no pytorch_lora_weights.safetensors"):
        resolve_checkpoint(tmp_path / "empty")


def _folder(cache, name):
    """The one image cache folder model `name` was sampled into."""
    (folder,) = cache_folders(cache, name)
    return folder


def _image_diffs(folder_a, folder_b):
    pairs = list(zip(sorted(Path(folder_a).rglob("*.png")), sorted(Path(folder_b).rglob("*.png"))))
    assert pairs
    return [ImageChops.difference(Image.open(a).convert("RGB"), Image.open(b).convert("RGB")).getbbox()
            for a, b in pairs]


def test_checkpoints_evaluate_like_final_and_log_to_wandb(lora_run, tmp_path):
    run_dir, final = lora_run
    # the same run stopped at step 4 (constant lr): its final/ must equal the step-4 checkpoint
    _, final4 = train(tmp_path / "mapo4", LORA_RUN + ["trainer.max_steps=4"])
    step2, step4 = run_dir / "checkpoints" / "step_2", run_dir / "checkpoints" / "step_4"
    cfg = eval_cfg([f"checkpoint={final}", "eval.num_prompts=2", "eval.steps=2", "wandb.enabled=true",
                    f"models=[{{checkpoint: {step2}}}, {{checkpoint: {step4}}}, {{name: final4, checkpoint: {final4}}}]"])
    rows = run_evaluation(cfg, tmp_path / "eval")
    by = {(r["model"], r["reward"]): r for r in rows}
    assert list(dict.fromkeys(m for m, _ in by)) == ["base", "mapo@2", "mapo@4", "final4", "mapo@6"]
    assert by[("final4", "pickscore")]["step"] == 4 and by[("mapo@2", "pickscore")]["step"] == 2
    assert by[("mapo@4", "pickscore")]["mean"] == pytest.approx(by[("final4", "pickscore")]["mean"])
    cache = tmp_path / "eval" / "images"
    # mapo@4 and final4 hold the same weights: one cache folder if their files are byte-identical
    assert all(box is None for box in _image_diffs(_folder(cache, "mapo@4"), _folder(cache, "final4")))
    assert _folder(cache, "mapo@2") != _folder(cache, "mapo@4")
    assert any(box is not None for box in _image_diffs(_folder(cache, "mapo@2"), _folder(cache, "mapo@4"))), \
        "step 2 and step 4 LoRAs gave identical images"
    assert Image.open(tmp_path / "eval" / "reward_vs_step.png").size[0] > 0
    assert "reward_vs_step.png" in (tmp_path / "eval" / "report.html").read_text()
    # wandb (offline): one run with the results table, grid, plot and sample images
    runs = list((tmp_path / "eval" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = [p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*") if p.is_file()]
    assert any("media/table/results" in m for m in media), media
    assert any("media/table/samples" in m for m in media), media
    assert any("media/images/grid" in m for m in media), media
    assert any("media/images/reward_vs_step" in m for m in media), media
    assert sum("media/images/samples/" in m for m in media) == 5 * 4  # 5 models x 4 (prompt, seed) images


def test_multirun_sweep_over_checkpoints_writes_a_summary(lora_run, tmp_path):
    run_dir, final = lora_run
    step2 = run_dir / "checkpoints" / "step_2"
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "t2i_align.evaluate", "-m", f"checkpoint={step2},{final}", "eval.num_prompts=2",
         "eval.steps=2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # jobs x (base + checkpoint) x rewards
    assert {r["model"] for r in rows} == {"base", "mapo@2", "mapo@6"}
    assert {r["job"] for r in rows} == {f"checkpoint={step2}", f"checkpoint={final}"}
    assert {r["step"] for r in rows if r["model"] != "base"} == {"2", "6"}
    assert Image.open(sweep / "reward_vs_step.png").size[0] > 0
    html = (sweep / "summary.html").read_text()
    assert "0/report.html" in html and "1/report.html" in html
    # the base model's images were made once and shared by both jobs through <sweep>/images
    assert len(list(_folder(sweep / "images", "base").glob("*.png"))) == 2 * 2
    assert json.loads((sweep / "1" / "results.json").read_text())[1]["model"] == "mapo@6"
