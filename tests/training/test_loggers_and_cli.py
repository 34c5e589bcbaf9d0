"""Trackers (wandb offline, tensorboard) and the real command line."""

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.training.helpers import TINY_CLI, read_metrics, train

REPO = Path(__file__).resolve().parents[2]


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir, _ = train(tmp_path / "run", ["logger=wandb"])
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run written"
    assert len(read_metrics(run_dir)) == 2


def test_tensorboard_events_are_written(tmp_path):
    run_dir, _ = train(tmp_path / "run", ["logger=tensorboard"])
    assert list(run_dir.rglob("events.out.tfevents.*"))


def test_command_line_entry_point(tmp_path):
    run_dir = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "t2i_align.train", f"run_dir={run_dir}", *TINY_CLI, "method=dpo",
         "trainer.max_steps=2", "trainer.batch_size=2", "data.num_generated=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.method.name == "dpo" and cfg.trainer.max_steps == 2
    assert "${" not in (run_dir / "config.yaml").read_text(), "config.yaml must be resolved"
    assert (run_dir / "final" / "diffusion_pytorch_model.safetensors").is_file()
    assert len(read_metrics(run_dir)) == 2
