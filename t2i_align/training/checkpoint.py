"""Checkpoints that survive crashes, and resume.

Layout: <run dir>/checkpoints/step_<N>/ holding
  unet/ (full fine-tuning, diffusers format) or unet_lora.safetensors (LoRA trainable weights),
  the optimizer / LR-schedule / grad-scaler state written by accelerate.save_state,
  trainer_state.json (step, data position, counters).
No noise-generator state: every sample's randomness is seeded by (seed, step, micro-batch,
dataset index) (noising/random.py), so a resumed run draws the same without it.
Each checkpoint is written to .tmp-step_<N> and renamed when complete, so a kill mid-write
never leaves a directory that looks finished; only the last `keep_last` are kept.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from t2i_align.models.lora import load_lora_trainable_state, lora_trainable_state, save_lora
from t2i_align.errors import InputNotFoundError

log = logging.getLogger("t2i_align.train")

_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def find_resume_checkpoint(run_dir, resume) -> Path | None:
    """Resolve trainer.resume: null/false -> None; "latest" -> the newest checkpoint of this run
    dir (None when there is none yet, so a requeued job can always pass resume=latest); a path ->
    that checkpoint, or the newest checkpoint of that run dir."""
    if resume in (None, False, "", "none", "null"):
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(str(resume))
    if (path / "trainer_state.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise InputNotFoundError(f"trainer.resume={resume!r}: no checkpoint there (expected a "
                            "step_<N> folder with trainer_state.json, or a run dir with checkpoints/)")


def register_unet_state_hooks(accelerator, use_lora: bool, family: str = "sdxl"):
    """Make accelerate's save_state / load_state write the UNet as a diffusers folder (full FT)
    or only the LoRA weights, instead of one opaque full state dict. A LoRA checkpoint also holds
    pytorch_lora_weights.safetensors (diffusers format), so a checkpoint loads into a pipeline
    like final/ does (python -m t2i_align.evaluate checkpoint=<run>/checkpoints/step_N)."""

    def save_hook(models, weights, output_dir):
        for model, _ in zip(models, list(weights)):
            if use_lora:
                save_file(lora_trainable_state(model), os.path.join(output_dir, "unet_lora.safetensors"))
                save_lora(model, output_dir, family)
            else:
                model.save_pretrained(os.path.join(output_dir, "unet"), safe_serialization=True)
        weights.clear()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            if use_lora:
                load_lora_trainable_state(model, load_file(os.path.join(input_dir, "unet_lora.safetensors")))
            else:
                loaded = type(model).from_pretrained(input_dir, subfolder="unet")
                model.load_state_dict(loaded.state_dict())
                del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, run_dir, step: int, trainer_state: dict, keep_last: int) -> Path:
    """Write checkpoint step_<step> atomically (temp dir + rename), then prune old ones."""
    root = Path(run_dir) / "checkpoints"
    tmp = root / f".tmp-step_{step}"
    final = root / f"step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a run killed while writing
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    """Restore model / optimizer / schedule / RNG from `checkpoint`; return its trainer state."""
    checkpoint = Path(checkpoint)
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / "trainer_state.json").read_text())
