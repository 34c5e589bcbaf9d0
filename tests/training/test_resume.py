"""A stopped run resumed from its last checkpoint ends with the same weights as an
uninterrupted run (same data order across an epoch boundary, same noise, same optimizer state)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t2i_align.training.checkpoint import list_checkpoints
from tests.training.helpers import TINY_CLI, final_weights, read_metrics, train

# 15 pairs / batch 2 = 7 batches per epoch: 9 steps cross an epoch boundary; random crop and
# flip and caption dropout make every source of randomness matter.
COMMON = ["trainer.max_steps=9", "trainer.checkpoint_every=3", "trainer.keep_last=2",
          "data.random_crop=true", "data.resolution=24", "trainer.caption_dropout=0.3"]


@pytest.mark.parametrize("extra", [["method=dpo"], ["method=mapo", "trainer.lora.enabled=true",
                                                    "trainer.grad_accum=2"]],
                         ids=["dpo-full", "mapo-lora-accum"])
def test_resume_matches_uninterrupted_run(tmp_path, extra):
    _, final_a = train(tmp_path / "a", COMMON + extra)

    run_b = tmp_path / "b"
    # stop at step 5: the checkpoint at step 3 survives, steps 4-5 are lost as in a crash
    train(run_b, COMMON + extra + ["trainer.stop_after_steps=5"])
    assert [s for s, _ in list_checkpoints(run_b)] == [3]
    assert not (run_b / "final").exists()
    _, final_b = train(run_b, COMMON + extra + ["trainer.resume=latest"])

    a, b = final_weights(final_a), final_weights(final_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # keep_last=2 over checkpoints at 3 and 6
    assert [s for s, _ in list_checkpoints(run_b)] == [3, 6]
    steps = [r["step"] for r in read_metrics(run_b)]
    assert steps == list(range(1, 10)), "metrics.jsonl must hold each step once after a resume"
    state = json.loads((run_b / "checkpoints" / "step_6" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["epoch"] >= 0


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path):
    run_dir, final = train(tmp_path / "r", ["trainer.resume=latest"])
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert final.is_dir()


def test_resume_from_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        train(tmp_path / "r", [f"trainer.resume={tmp_path / 'nowhere'}"])


def test_killed_process_resumes(tmp_path):
    """SIGKILL a real `python -m t2i_align.train` mid-run, then resume it in-process."""
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "t2i_align.train", f"run_dir={run_dir}", *TINY_CLI, "method=sft",
            "trainer.batch_size=2", "data.num_generated=16", "trainer.max_steps=100000",
            "trainer.checkpoint_every=2", "trainer.keep_last=1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(s >= 4 for s, _ in list_checkpoints(run_dir)):
            time.sleep(0.2)
        assert any(s >= 4 for s, _ in list_checkpoints(run_dir)), "no checkpoint written in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (last_step, _), = list_checkpoints(run_dir)
    _, final = train(run_dir, ["method=sft", f"trainer.max_steps={last_step + 2}",
                               "trainer.checkpoint_every=2", "trainer.keep_last=1",
                               "trainer.resume=latest"])
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, last_step + 3))
    assert (final / "diffusion_pytorch_model.safetensors").is_file()
