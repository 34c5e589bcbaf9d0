"""Crash safety: a real `python -m t2i_align.train` SIGKILLed at random moments (some inside
checkpoint writes) and restarted with trainer.resume=latest each time ends bit-identical to an
uninterrupted run. The logic lives in scripts/crash_test.py (run it bigger by hand:
python scripts/crash_test.py --kills 20 --steps 40 --seed 0)."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_test.py"


def load_crash_test():
    spec = importlib.util.spec_from_file_location("crash_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_test"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path):
    crash_test = load_crash_test()
    steps = 12
    report = crash_test.run_crash_test(tmp_path, kills=5, steps=steps, seed=0, max_delay=1.0)
    print(report.table())
    print(report.verdict())
    assert len(report.kills) >= 3, report.table()
    assert report.kills_inside_write >= 1, "no kill landed inside a checkpoint write:\n" + report.table()
    assert report.violations == [], "a step_<N> folder without trainer_state.json was seen"
    assert report.metric_steps == list(range(1, steps + 1)), "metrics.jsonl must hold each step once"
    assert report.final is not None and report.mismatches == [], report.verdict()
    assert report.passed
