"""Crash test: SIGKILL a tiny training run at random moments, restart it with
trainer.resume=latest each time, and check that it ends bit-identical to an uninterrupted run.

    python scripts/crash_test.py --kills 20 --steps 40 --seed 0

The run (`python -m t2i_align.train` on the tiny random SDXL, generated pairs, SFT, a checkpoint
every step, keep_last=2) is launched as a subprocess. A seeded random.Random picks, for each
kill, one of two moments:
  in-write  right after a new .tmp-step_<N> folder appears (plus 0-20 ms), so the kill lands
            inside a checkpoint write (or just after it, if the write was faster);
  random    a random delay (0 to --max-delay s) after training began (metrics.jsonl touched).
After each kill it records whether a .tmp-step_* folder created by that process was left
behind (the kill landed inside a checkpoint write), checks that no step_<N> folder lacks
trainer_state.json, and notes the step the next launch resumes from. Once --kills kills are
spent the run is left to finish. Verdict: every tensor in final/ equals (torch.equal) the
uninterrupted run's, metrics.jsonl holds each step 1..N exactly once, no half-written or
half-deleted step_<N> folder was ever seen. Exit status 0 on PASS, 1 on FAIL.
tests/training/test_crash_safety.py runs this at a small size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["model=tiny_sdxl", "data=generated", "trainer=default", "post_eval=none", "method=sft",
        "trainer.batch_size=2", "data.num_generated=16", "trainer.checkpoint_every=1", "trainer.keep_last=2"]
_STEP_DIR = re.compile(r"^step_(\d+)$")


def train_overrides(steps: int, extra=()) -> list[str]:
    """The config of the run under test (also usable with tests/training/helpers.train)."""
    return [*BASE, f"trainer.max_steps={steps}", *extra]


def train_command(run_dir, steps: int, extra=()) -> list[str]:
    return [sys.executable, "-m", "t2i_align.train", f"run_dir={run_dir}", *train_overrides(steps, extra),
            "trainer.resume=latest"]


def train_env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Kill:
    number: int
    mode: str            # in-write | random
    moment: str          # when it was sent, in words
    inside_write: bool   # a .tmp-step_* folder of the killed process was left behind
    resumed_from: int    # the step the next launch resumes from (0: no checkpoint yet)


@dataclass
class Report:
    steps: int
    kills: list[Kill] = field(default_factory=list)
    finished_early: int = 0          # launches that completed before their planned kill
    violations: list[str] = field(default_factory=list)
    metric_steps: list[int] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    final: Path | None = None

    @property
    def kills_inside_write(self) -> int:
        return sum(k.inside_write for k in self.kills)

    @property
    def passed(self) -> bool:
        return (self.final is not None and not self.mismatches and not self.violations
                and self.metric_steps == list(range(1, self.steps + 1)))

    def table(self) -> str:
        lines = [f"{'kill':>4}  {'mode':<8}  {'moment':<42}  {'inside write':<12}  resumed from"]
        for k in self.kills:
            inside = "yes" if k.inside_write else "no"
            lines.append(f"{k.number:>4}  {k.mode:<8}  {k.moment:<42}  {inside:<12}  step {k.resumed_from}")
        return "\n".join(lines)

    def verdict(self) -> str:
        problems = []
        if self.final is None:
            problems.append("no final/")
        if self.mismatches:
            problems.append(f"{len(self.mismatches)} tensor(s) differ from the uninterrupted run: "
                            f"{self.mismatches[:3]}")
        if self.violations:
            problems.append(f"incomplete step_<N> folders seen: {self.violations[:3]}")
        if self.metric_steps != list(range(1, self.steps + 1)):
            problems.append(f"metrics.jsonl steps {self.metric_steps} (expected 1..{self.steps} once each)")
        head = (f"{len(self.kills)} kills ({self.kills_inside_write} inside a checkpoint write), "
                f"{self.finished_early} launch(es) finished before their kill")
        if problems:
            return f"FAIL: {head}; " + "; ".join(problems)
        return f"PASS: {head}; final weights bit-identical to the uninterrupted run, each step logged once"


def _tmp_folders(run_dir) -> set:
    """Identity of every .tmp-step_* folder now (name, inode, ctime): a new one is a write in progress."""
    root = Path(run_dir) / "checkpoints"
    found = set()
    try:
        with os.scandir(root) as it:
            for e in it:
                if e.name.startswith(".tmp-step_"):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    found.add((e.name, st.st_ino, st.st_ctime_ns))
    except FileNotFoundError:
        pass
    return found


def incomplete_step_folders(run_dir) -> list[str]:
    """step_<N> folders without trainer_state.json (must never exist)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if _STEP_DIR.match(p.name) and not (p / "trainer_state.json").is_file())


def latest_step(run_dir) -> int:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return 0
    steps = [int(m.group(1)) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "trainer_state.json").is_file()]
    return max(steps, default=0)


def metric_steps(run_dir) -> list[int]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _signature(path: Path):
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return None


def final_tensors(final_dir) -> dict:
    """Every tensor of every .safetensors file under final_dir, keyed '<file>:<tensor>'."""
    from safetensors.torch import load_file

    final_dir = Path(final_dir)
    out = {}
    for file in sorted(final_dir.rglob("*.safetensors")):
        rel = file.relative_to(final_dir)
        out.update({f"{rel}:{k}": v for k, v in load_file(str(file)).items()})
    return out


def compare_finals(a, b) -> list[str]:
    """Keys whose tensors differ (or exist on one side only); [] when bit-identical."""
    import torch

    ta, tb = final_tensors(a), final_tensors(b)
    bad = sorted(set(ta) ^ set(tb))
    bad += [k for k in sorted(set(ta) & set(tb)) if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    if not ta:
        bad.append(f"no tensors in {a}")
    return bad


def _launch(run_dir, steps, extra, log_file):
    return subprocess.Popen(train_command(run_dir, steps, extra), cwd=REPO, env=train_env(),
                            stdout=log_file, stderr=subprocess.STDOUT)


def _fail(message, log_path):
    tail = Path(log_path).read_text(errors="replace")[-3000:] if Path(log_path).exists() else ""
    raise RuntimeError(f"{message}; log {log_path}:\n{tail}")


def run_uninterrupted(run_dir, steps: int, extra=(), timeout: float = 900) -> Path:
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "w") as log_file:
        proc = _launch(run_dir, steps, extra, log_file)
        if proc.wait(timeout=timeout) != 0:
            _fail(f"uninterrupted run exited with {proc.returncode}", log_path)
    return run_dir / "final"


def _wait_for(predicate, proc, deadline, poll: float):
    """Poll until predicate() is truthy (returns it), the process exits or the deadline passes (None)."""
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if proc.poll() is not None:
            return None
        time.sleep(poll)
    return None


def run_crash_test(work_dir, kills: int = 20, steps: int = 40, seed: int = 0, reference_final=None,
                   max_delay: float = 1.0, write_delay: float = 0.02, extra=(), timeout: float = 900,
                   log=print) -> Report:
    """Kill / restart a run `kills` times, let it finish, compare with `reference_final` (an
    uninterrupted run's final/ with the same train_overrides; run as a subprocess when None)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    run_dir = work_dir / "killed"
    log_path = work_dir / "killed.log"
    report = Report(steps=steps)
    metrics = run_dir / "metrics.jsonl"
    with open(log_path, "a") as log_file:
        while len(report.kills) < kills:
            mode = "in-write" if rng.random() < 0.5 else "random"
            delay = rng.uniform(0, write_delay if mode == "in-write" else max_delay)
            if len(report.kills) == kills - 1 and not report.kills_inside_write:
                mode, delay = "in-write", 0.0  # the last chance to land one kill inside a write
            tmp_before = _tmp_folders(run_dir)
            metrics_before = _signature(metrics)
            proc = _launch(run_dir, steps, extra, log_file)
            deadline = time.monotonic() + timeout
            if mode == "in-write":
                new = _wait_for(lambda: _tmp_folders(run_dir) - tmp_before, proc, deadline, poll=0.0005)
                what = f"{delay * 1e3:.1f} ms after {sorted(new)[0][0]} appeared" if new else ""
            else:
                new = _wait_for(lambda: _signature(metrics) != metrics_before, proc, deadline, poll=0.005)
                what = f"{delay:.2f} s after training began"
            if new:
                time.sleep(delay)
            if proc.poll() is not None:  # it finished (or failed) before the kill
                if proc.returncode != 0:
                    _fail(f"the run exited with {proc.returncode} before kill {len(report.kills) + 1}", log_path)
                report.finished_early += 1
                log(f"(launch finished before its {mode} kill)")
                break
            if not new:
                proc.kill()
                _fail("timed out waiting for the moment to kill", log_path)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            inside = bool(_tmp_folders(run_dir) - tmp_before)
            report.violations += [f"after kill {len(report.kills) + 1}: {name}"
                                  for name in incomplete_step_folders(run_dir)]
            report.kills.append(Kill(len(report.kills) + 1, mode, what, inside, latest_step(run_dir)))
        if not report.finished_early:  # the kills are spent: let it finish
            proc = _launch(run_dir, steps, extra, log_file)
            if proc.wait(timeout=timeout) != 0:
                _fail(f"the last launch exited with {proc.returncode}", log_path)
    report.violations += [f"at the end: {name}" for name in incomplete_step_folders(run_dir)]
    report.final = run_dir / "final" if (run_dir / "final").is_dir() else None
    report.metric_steps = metric_steps(run_dir)
    if reference_final is None:
        reference_final = run_uninterrupted(work_dir / "uninterrupted", steps, extra, timeout)
    if report.final is not None:
        report.mismatches = compare_finals(report.final, reference_final)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=1.0,
                        help="random kills: at most this many seconds after training began")
    parser.add_argument("--work-dir", default=None, help="default: a new temporary folder (kept, printed)")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="t2i_crash_test_"))
    print(f"work dir {work_dir}")
    report = run_crash_test(work_dir, kills=args.kills, steps=args.steps, seed=args.seed,
                            max_delay=args.max_delay)
    print(report.table())
    print(report.verdict())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
