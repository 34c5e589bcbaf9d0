"""<run dir>/final: the trained denoiser in the form diffusers loads, written atomically.

Full fine-tuning writes a diffusers model folder (config.json + diffusion_pytorch_model*.safetensors,
sharded above 10 GB as ``save_pretrained`` shards); LoRA writes pytorch_lora_weights.safetensors
(models/lora.py ``save_lora``). Both get training_info.json, and the folder is written as
.tmp-final and renamed, so a kill leaves the old final/ or the new one, never half of one.

Sharded engines: under FSDP and DeepSpeed the main process's module holds only its own shards
(ZeRO-3 keeps empty placeholders, FSDP flat shards), so saving ``unwrap_model(...)`` would write
partial weights. There every process first takes part in ``accelerator.get_state_dict``, which
gathers the whole state dict (FSDP: a full state dict on rank 0; ZeRO-3: the 16-bit weights, which
needs ``zero3_save_16bit_model: true`` in the launch config, as scripts/launch/accelerate/zero3.yaml
sets), and the main process writes that. Single process and DDP keep ``save_pretrained`` of the
module itself (the weights are whole there).
"""

import json
import os
import shutil
from pathlib import Path

from accelerate.utils import DistributedType

from t2i_align.models.lora import save_lora
from t2i_align.training.checkpoint import discard_folder

SHARDED_TYPES = (DistributedType.FSDP, DistributedType.DEEPSPEED)
WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"  # diffusers' names, shards and index alike
MAX_SHARD_SIZE = "10GB"  # diffusers' save_pretrained default


def gathered_state_dict(accelerator, denoiser) -> dict | None:
    """Every process: the whole state dict of a sharded (FSDP / DeepSpeed) denoiser, gathered by
    accelerate (a collective: every rank must call it); None when the module's weights are
    already whole (single process, DDP)."""
    if accelerator.distributed_type not in SHARDED_TYPES:
        return None
    return accelerator.get_state_dict(denoiser)


def save_model_folder(model, state_dict: dict, folder: Path) -> None:
    """A diffusers model folder from ``state_dict`` instead of the module's own tensors: the
    model's config.json plus safetensors files named as ``ModelMixin.save_pretrained`` names them
    (from_pretrained of the folder gives the model with these weights)."""
    from huggingface_hub import save_torch_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_torch_state_dict(tensors, folder, filename_pattern=WEIGHTS_PATTERN, max_shard_size=MAX_SHARD_SIZE,
                          safe_serialization=True)


def save_final(accelerator, denoiser, use_lora: bool, family: str, run_dir: Path, info: dict) -> Path:
    """<run dir>/final from the prepared ``denoiser`` (every process calls this); returns its path."""
    final = run_dir / "final"
    state_dict = gathered_state_dict(accelerator, denoiser)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = run_dir / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        model = accelerator.unwrap_model(denoiser)
        if use_lora:
            save_lora(model, tmp, family, state_dict=state_dict)
        elif state_dict is not None:
            save_model_folder(model, state_dict, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training_info.json").write_text(json.dumps(info, indent=2))
        if final.exists():  # renamed away first: a kill never leaves a half-deleted final/
            discard_folder(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
