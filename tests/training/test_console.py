"""What a user sees on the console: a bad-input error is one line and exit status 1 (the
traceback with HYDRA_FULL_ERROR=1); a clean run prints our own progress and log lines, not the
libraries' loading bars or deprecation warnings; DataLoader workers are capped at the cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.helpers import TINY_CLI

ROOT = Path(__file__).resolve().parents[2]


def run_cli(args, **env):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})


def test_bad_input_is_one_line_without_traceback_unless_asked(tmp_path):
    args = ["t2i_align.train", f"run_dir={tmp_path / 'r'}", "model=tiny_sdxl", "data=pickapic_v2",
            f"data.path={tmp_path / 'missing.parquet'}", "post_eval=none"]
    done = run_cli(args)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: data.path '{tmp_path / 'missing.parquet'}' does not exist "
                     "(HYDRA_FULL_ERROR=1 shows the traceback)"], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    full = run_cli(args, HYDRA_FULL_ERROR="1")
    assert full.returncode != 0 and "Traceback" in full.stderr and "InputNotFoundError" in full.stderr


def test_clean_run_console_is_our_own_output(tmp_path):
    done = run_cli(["t2i_align.train", f"run_dir={tmp_path / 'r'}", *TINY_CLI, "method=dpo", "trainer.max_steps=2",
                    "trainer.batch_size=2", "data.num_generated=16", "data.num_workers=64",
                    "trainer.checkpoint_every=1"])
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    for noise in ("Loading weights", "Loading pipeline components", "torch_dtype", "FutureWarning",
                  "DeprecationWarning", "UserWarning", "worker processes in total", "Generating train split",
                  "Map:", "Filter:"):
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    assert "data.num_workers=64 capped to" in console
    assert "generated pairs (seed 0): 16 rows; 0 dropped as invalid, 1 ties dropped; using 15 pairs" in console
    assert "method dpo | sdxl" in console and "train dpo" in console and "saved " in console
