"""Checkpoints that survive crashes, and resume; no pickle in them.

Layout: <run dir>/checkpoints/step_<N>/ holding
  unet/                          full fine-tuning: the diffusers UNet folder (config.json +
                                 diffusion_pytorch_model.safetensors), as final/ holds it
  unet_lora.safetensors          LoRA: the trainable adapter weights (peft key names) ...
  pytorch_lora_weights.safetensors   ... and the same in diffusers format, so a checkpoint loads
                                 into a pipeline like final/ does
  optimizer.json                 the optimizer state's structure, param_groups and scalars
  optimizer.safetensors          its tensors (exp_avg, ...; sharded above 4 GiB)
  lr_scheduler.json              the LR schedule's state (last_epoch, base_lrs, ...)
  grad_scaler.json               the fp16 grad scaler's state (only with an enabled scaler)
  rng_state.safetensors          every process's torch CPU / CUDA, Python and numpy RNG states
                                 as integer tensors (keeps LoRA dropout exact on resume)
  trainer_state.json             step, data position, counters: written last
(state_io.py describes the optimizer / schedule / RNG files.) Why no pickle: torch.load of a
pickle, and accelerate's load_state, can run code stored in the file, so resuming from a folder
someone else made would run their code; safetensors and JSON hold only data. No noise-generator
state either: every sample's randomness is seeded by (seed, step, micro-batch, dataset index)
(noising/random.py), so a resumed run draws the same without it.

Single process and DDP (accelerate's NO / MULTI_CPU / MULTI_GPU): the main process writes every
file (the weights and optimizer state are the same on every rank; the RNG states are gathered
from all ranks) and every rank loads. DeepSpeed and FSDP shard the model and optimizer: those
runs keep accelerate's save_state, whose checkpoints hold pickle files written by those engines
(and accelerate's RNG / schedule .pkl / .bin files); resuming one, like resuming an old-format
checkpoint of an earlier version (optimizer.bin, random_states_0.pkl, ...), is refused unless
trainer.allow_pickle_checkpoint=true.

Crash safety: each checkpoint is written to .tmp-step_<N>, trainer_state.json last, and renamed
to step_<N> when complete, so a kill mid-write never leaves a folder that looks finished; only
the last `keep_last` are kept, and an old one is first renamed to .trash-step_<N> and then
deleted, so a kill mid-delete never leaves a half-deleted step_<N>. Leftover .tmp-* / .trash-*
folders are removed at the next save; list_checkpoints only returns step_<N> folders holding
trainer_state.json.

Use (recipe.py): contents = CheckpointContents(unet, optimizer, lr_scheduler, use_lora, family)
after accelerator.prepare; save_checkpoint(accelerator, contents, run_dir, step, trainer_state,
keep_last) and load_checkpoint(accelerator, contents, folder, allow_pickle). scripts/crash_test.py SIGKILLs a run at random moments to
check all of the above.
"""

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_file, save_file

from t2i_align.models.lora import load_lora_trainable_state, lora_trainable_state, save_lora
from t2i_align.errors import InputError, InputNotFoundError, UserError
from t2i_align.training import state_io

log = logging.getLogger("t2i_align.train")

_STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
ALLOW_KEY = "trainer.allow_pickle_checkpoint"
# Where this module writes every file itself (weights replicated on every rank); other
# distributed types (DeepSpeed, FSDP, ...) go through accelerate's save_state / load_state.
OWN_FORMAT_TYPES = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


class PickleCheckpointError(UserError, RuntimeError):
    """Resuming needs pickle files and trainer.allow_pickle_checkpoint is not set."""


@dataclass
class CheckpointContents:
    """What a checkpoint restores besides trainer_state.json: the (accelerate-prepared) UNet,
    optimizer and LR schedule, and how the UNet is saved (LoRA or full, model family)."""
    unet: object
    optimizer: object
    lr_scheduler: object
    use_lora: bool
    family: str  # the model family's name (its pipeline class writes LoRA files)


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run, oldest first: step_<N> folders holding trainer_state.json."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / TRAINER_STATE).is_file()]
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
    if (path / TRAINER_STATE).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise InputNotFoundError(f"trainer.resume={resume!r}: no checkpoint there (expected a "
                            "step_<N> folder with trainer_state.json, or a run dir with checkpoints/)")


def register_unet_state_hooks(accelerator, use_lora: bool, family: str):
    """Make accelerate's save_state / load_state write the UNet as a diffusers folder (full FT)
    or only the LoRA weights, instead of one opaque full state dict, as save_checkpoint does.
    Used where accelerate's save_state / load_state still run: DeepSpeed / FSDP runs, and loading
    an old-format checkpoint with trainer.allow_pickle_checkpoint=true."""

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


def _own_format(accelerator) -> bool:
    return accelerator.distributed_type in OWN_FORMAT_TYPES


def pickle_files(folder) -> list[str]:
    """Files under `folder` with a pickle / torch.save suffix (.bin .pkl .pt .pth), relative paths."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def discard_folder(path: Path) -> None:
    """Delete a folder so that a kill at any moment leaves either it whole or no folder of that
    name: rename to a hidden .trash-<name> first, then delete that."""
    trash = path.parent / f".trash-{path.name}"
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """.tmp-* (a write cut by a kill) and .trash-* (a delete cut by a kill) folders."""
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".trash-")):
            shutil.rmtree(p, ignore_errors=True)


def _write_state(accelerator, contents: CheckpointContents, folder: Path, rng_states: list) -> None:
    """Main process: model weights, optimizer, LR schedule, grad scaler, RNG states (no pickle)."""
    model = accelerator.unwrap_model(contents.unet)
    if contents.use_lora:
        save_file(lora_trainable_state(model), str(folder / "unet_lora.safetensors"))
        save_lora(model, folder, contents.family)
    else:
        model.save_pretrained(folder / "unet", safe_serialization=True)
    state_io.save_optimizer_state(contents.optimizer, folder)
    state_io.save_scheduler_state(contents.lr_scheduler, folder)
    state_io.save_scaler_state(accelerator.scaler, folder)
    state_io.save_rng_states(rng_states, folder)


def _read_state(accelerator, contents: CheckpointContents, folder: Path) -> None:
    """Every process: the inverse of _write_state."""
    model = accelerator.unwrap_model(contents.unet)
    if contents.use_lora:
        load_lora_trainable_state(model, load_file(str(folder / "unet_lora.safetensors")))
    else:
        loaded = type(model).from_pretrained(folder, subfolder="unet", use_safetensors=True)
        model.load_state_dict(loaded.state_dict())
        del loaded
    state_io.load_optimizer_state(contents.optimizer, folder)
    state_io.load_scheduler_state(contents.lr_scheduler, folder)
    state_io.load_scaler_state(accelerator.scaler, folder)
    state_io.load_rng_state(folder, accelerator.process_index)


def save_checkpoint(accelerator, contents: CheckpointContents, run_dir, step: int, trainer_state: dict,
                    keep_last: int) -> Path:
    """Write `contents` and `trainer_state` as checkpoint step_<step> atomically (temp dir +
    rename), then prune old ones."""
    root = Path(run_dir) / "checkpoints"
    tmp = root / f".tmp-step_{step}"
    final = root / f"step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)  # left by a run killed while writing or pruning
        tmp.mkdir()
    accelerator.wait_for_everyone()
    if _own_format(accelerator):
        rng_states = [state_io.capture_rng_state()]
        if accelerator.num_processes > 1:
            rng_states = gather_object(rng_states)  # one entry per rank, in rank order
        if accelerator.is_main_process:
            _write_state(accelerator, contents, tmp, rng_states)
    else:
        # DeepSpeed / FSDP: the engines write their sharded states (pickle files)
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))  # last: marks it complete
        if final.exists():
            discard_folder(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            discard_folder(old)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, contents: CheckpointContents | None, checkpoint: Path,
                    allow_pickle: bool = False) -> dict:
    """Restore model / optimizer / schedule / grad scaler / RNG from `checkpoint`; return its
    trainer state. A checkpoint that needs pickle files (DeepSpeed / FSDP, or an old-format one
    with optimizer.bin etc.) is refused unless allow_pickle (trainer.allow_pickle_checkpoint).
    `contents`: what to restore into (accelerate's load_state restores what was prepared)."""
    checkpoint = Path(checkpoint)
    own = (checkpoint / state_io.OPTIMIZER_JSON).is_file()
    if _own_format(accelerator) and own:
        _read_state(accelerator, contents, checkpoint)
    else:
        pickled = pickle_files(checkpoint)
        if _own_format(accelerator) and not pickled:
            raise InputNotFoundError(f"{checkpoint} is not a complete checkpoint: it has no {state_io.OPTIMIZER_JSON}")
        if own:
            raise InputError(f"{checkpoint} was written by a single-process / DDP run; resuming it under "
                             f"{accelerator.distributed_type} (sharded states) is not supported")
        if allow_pickle is not True:
            listed = ", ".join(pickled[:4]) + (", ..." if len(pickled) > 4 else "")
            kind = ("a DeepSpeed/FSDP checkpoint (accelerate save_state)" if not _own_format(accelerator)
                    else "an old-format (pickled) checkpoint")
            raise PickleCheckpointError(
                f"{checkpoint} is {kind} that contains pickle files ({listed or 'engine state'}), and loading "
                f"them can run code stored in them; if you trust that folder, set {ALLOW_KEY}=true to load it")
        log.warning("%s=true: loading the pickle files of %s with accelerate's load_state", ALLOW_KEY, checkpoint)
        accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / TRAINER_STATE).read_text())
