"""Generate evaluation images with the same prompts and seeds for every model, cached on disk.

A model is a base pipeline (hub id, local folder or tiny:<kind>) plus optionally a trained UNet
folder (a full fine-tuning run's final/ or a checkpoint's unet/) or LoRA weights (a run's final/
with pytorch_lora_weights.safetensors). Images are stored as
<cache>/<model key>/<settings key>/<prompt hash>_<seed>.png, so re-scoring, adding a model or
adding prompts never regenerates what exists.
"""

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def settings_key(steps: int, guidance_scale: float, resolution: int) -> str:
    return f"steps{steps}_cfg{guidance_scale:g}_res{resolution}"


def load_pipeline(base: str, unet: str | None = None, lora: str | None = None, device="cpu",
                  dtype=torch.float32, vae: str | None = None):
    """A diffusers text-to-image pipeline for `base`, with a trained UNet folder or LoRA loaded,
    and optionally another VAE (e.g. an fp16-safe SDXL VAE)."""
    from diffusers import AutoencoderKL, AutoPipelineForText2Image, UNet2DConditionModel

    from t2i_align.models.tiny import resolve_model_path

    base = resolve_model_path(base)
    kwargs = {"torch_dtype": dtype}
    if unet is not None:
        unet_dir = Path(unet)
        sub = "unet" if (unet_dir / "unet" / "config.json").is_file() else None
        kwargs["unet"] = UNet2DConditionModel.from_pretrained(unet, subfolder=sub, torch_dtype=dtype)
    if vae is not None:
        kwargs["vae"] = AutoencoderKL.from_pretrained(vae, torch_dtype=dtype)
    pipe = AutoPipelineForText2Image.from_pretrained(base, **kwargs)
    if lora is not None:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def image_path(cache_dir, model_key: str, prompt: str, seed: int, steps: int, guidance_scale: float,
               resolution: int) -> Path:
    return (Path(cache_dir) / model_key / settings_key(steps, guidance_scale, resolution)
            / f"{prompt_key(prompt)}_{seed}.png")


def generate_cached(pipe, model_key: str, prompts: list[str], seeds: list[int], cache_dir, steps: int = 30,
                    guidance_scale: float = 5.0, resolution: int = 1024, batch_size: int = 4) -> tuple[dict, int]:
    """Images for every (prompt, seed), generating only the missing ones.

    Each image has its own torch.Generator seeded with its seed, so a (prompt, seed) gives the
    same starting noise for every model and every batch composition. Returns
    ({(prompt, seed): path}, number generated now).
    """
    wanted = [(p, s) for p in prompts for s in seeds]
    paths = {(p, s): image_path(cache_dir, model_key, p, s, steps, guidance_scale, resolution) for p, s in wanted}
    missing = [(p, s) for p, s in wanted if not paths[(p, s)].is_file()]
    for start in tqdm(range(0, len(missing), batch_size), desc=f"generate {model_key}", disable=not missing):
        chunk = missing[start:start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        out = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                   height=resolution, width=resolution, generator=generators)
        for (p, s), image in zip(chunk, out.images):
            path = paths[(p, s)]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.png")
            image.save(tmp)
            tmp.replace(path)  # a killed run never leaves a half-written image that looks cached
    index = Path(cache_dir) / model_key / "prompts.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(index.read_text()) if index.is_file() else {}
    known.update({prompt_key(p): p for p in prompts})
    index.write_text(json.dumps(known, indent=1))
    return paths, len(missing)


def open_images(paths: dict, keys: list) -> list[Image.Image]:
    return [Image.open(paths[k]).convert("RGB") for k in keys]
