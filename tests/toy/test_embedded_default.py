"""`python -m t2i_align.train` with no arguments (here shrunk: 1 seed per prompt, 5 steps, 4
evaluation prompts): builds the toy set with the real builder, trains MaPO on toy_sdxl,
evaluates base vs aligned and writes the results table and grid into the run directory; the
console holds our own progress bars and log lines only."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_argument_run_builds_trains_and_evaluates(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2I_ALIGN_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "t2i_align.train", f"run_dir={run_dir}",
         "data.build_overrides=['dataset.pairs_per_prompt=1','dataset.steps=8','dataset.filter.margin=0']",
         "trainer.max_steps=5", "post_eval.eval.num_prompts=4", "post_eval.eval.steps=8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    built = list((tmp_path / "cache" / "datasets").glob("toy_pickstyle-toy_sdxl-*"))
    assert len(built) == 1 and (built[0] / "README.md").is_file()
    info = json.loads((built[0] / "build_info.json").read_text())
    assert info["planned"] == 48 and info["plan"]["chosen_prefix"] == "neon style: "
    assert json.loads((run_dir / "final" / "training_info.json").read_text())["steps"] == 5
    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    assert {(r["model"], r["reward"]) for r in rows} == {
        (m, r) for m in ("base", "mapo") for r in ("toy_style", "toy_colour", "toy_shape")}
    assert all(r["n"] == 8 and 0 <= r["mean"] <= 1 for r in rows)
    assert (run_dir / "eval" / "grid.png").is_file() and (run_dir / "eval" / "report.html").is_file()
    console = result.stdout + result.stderr
    for noise in ("Loading weights", "Loading pipeline components", "torch_dtype", "Warning", "Generating train split",
                  "Map:", "Filter:", "Saving the dataset"):
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    assert "build toy_pickstyle" in console and "train mapo" in console
