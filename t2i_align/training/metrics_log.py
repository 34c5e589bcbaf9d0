"""Per-step metrics: always to <run dir>/metrics.jsonl (main process), and to the accelerate
trackers (wandb / tensorboard) when a logger is configured."""

import json
import math
import os
from pathlib import Path

import torch


def to_float(value) -> float:
    """Tensor / number -> python float (one host sync per logged value)."""
    return float(value.item() if hasattr(value, "item") else value)


def mean_metrics(records: list[dict]) -> dict[str, float]:
    """Average each key over the micro-batches of one optimizer step."""
    keys = {k for r in records for k in r}
    return {k: sum(to_float(r[k]) for r in records if k in r) / sum(1 for r in records if k in r)
            for k in sorted(keys)}


def mean_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """The mean of each metric over all processes (one small all-reduce), so a multi-process run
    logs the loss of its global batch, as a single process with that batch would."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


class MetricsWriter:
    """Appends one JSON line per step; reopened in append mode so a resumed run continues the
    file (lines past the resume step, from the killed run, are dropped first)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int = 0):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self._truncate_after(resume_step)
            self._file = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int):
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        tmp = self.path.with_name(self.path.name + ".tmp")  # a kill mid-rewrite keeps the old file
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict):
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self):
        if self.enabled:
            self._file.close()


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": scalar}: trackers (TensorBoard hparams) take only flat scalars;
    None and lists become strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
