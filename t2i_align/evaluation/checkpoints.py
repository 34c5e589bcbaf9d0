"""Turn what training wrote into a model to evaluate: {name, unet, lora, step}.

Accepted paths (all written by python -m t2i_align.train, or by any diffusers tool):
- a run directory (holds final/ and/or checkpoints/): its final/, else its latest checkpoint;
- a run's final/ or checkpoints/step_N/: LoRA (pytorch_lora_weights.safetensors) or full UNet
  (a diffusers UNet folder, or unet/ inside a checkpoint);
- a LoRA .safetensors file, or any diffusers UNet folder.
The training step comes from trainer_state.json (checkpoints) or training_info.json (final/), so
sweeps over checkpoints can plot reward against step.
"""

import json
import re
from pathlib import Path
from t2i_align.errors import InputError, InputNotFoundError

LORA_FILE = "pytorch_lora_weights.safetensors"


def _step_of(folder: Path) -> int | None:
    for name, key in (("trainer_state.json", "step"), ("training_info.json", "steps")):
        info = folder / name
        if info.is_file():
            return int(json.loads(info.read_text())[key])
    match = re.fullmatch(r"step_(\d+)", folder.name)
    return int(match.group(1)) if match else None


def _latest_checkpoint(run: Path) -> Path | None:
    steps = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("step_*")
             if (m := re.fullmatch(r"step_(\d+)", p.name)) and p.is_dir()]
    return max(steps)[1] if steps else None


def _run_name(folder: Path) -> str:
    """The run a final/ or checkpoints/step_N folder belongs to, for default model names."""
    if folder.name == "final" or folder.parent.name == "checkpoints":
        run = folder.parent if folder.name == "final" else folder.parent.parent
        return run.name
    return folder.name


def resolve_checkpoint(path) -> dict:
    """{"name", "unet", "lora", "step"} for a trained model at `path` (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(f"checkpoint {path}: a file must be LoRA weights (.safetensors)")
        return {"name": path.parent.name, "unet": None, "lora": str(path), "step": _step_of(path.parent)}
    if (path / "final").is_dir() or (path / "checkpoints").is_dir():  # a run directory
        chosen = path / "final" if (path / "final").is_dir() else _latest_checkpoint(path)
        if chosen is None:
            raise InputNotFoundError(f"run {path} has neither final/ nor a checkpoints/step_N folder")
        return resolve_checkpoint(chosen)
    step = _step_of(path)
    name = _run_name(path) + ("" if step is None else f"@{step}")
    if (path / LORA_FILE).is_file():
        return {"name": name, "unet": None, "lora": str(path), "step": step}
    if (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
        return {"name": name, "unet": str(path), "lora": None, "step": step}
    if (path / "unet_lora.safetensors").is_file():
        raise InputError(f"checkpoint {path} predates diffusers-format LoRA checkpoints (no {LORA_FILE}); "
                         "evaluate its run's final/ instead")
    raise InputError(f"checkpoint {path}: no {LORA_FILE}, no UNet config.json (nor unet/config.json)")
