"""Shared helpers for the CLIP-based rewards (PickScore, CLIP score, LAION aesthetic).

All three rewards use a ``transformers.CLIPModel`` and the CLIP processor (resize shortest
side to 224 bicubic, centre crop 224, OpenAI mean/std; for the real checkpoints these come
from the processor's ``preprocessor_config.json``). Images of any size / mode are converted to
RGB first.

transformers 5.x: ``get_image_features`` / ``get_text_features`` return an output object whose
``.pooler_output`` is the projected embedding (4.x returned the tensor directly); both are
handled here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from PIL import Image
from t2i_align.errors import InputError

T = TypeVar("T")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_MAX_LENGTH = 77


def to_rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Convert every image to RGB (palette, RGBA, L, CMYK, ... -> RGB); RGB images pass as is."""
    out = []
    for img in images:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected PIL.Image.Image, got {type(img).__name__}")
        out.append(img if img.mode == "RGB" else img.convert("RGB"))
    return out


def batched(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``batch_size`` elements."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def check_pairs(images: Sequence, prompts: Sequence[str]) -> None:
    """Raise a clear error unless ``images`` and ``prompts`` pair up one to one."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, one per image, not a single string")
    if len(images) != len(prompts):
        raise InputError(f"got {len(images)} images but {len(prompts)} prompts; need one prompt per image")


def _features(out) -> torch.Tensor:
    """The projected embedding from get_*_features (tensor in transformers 4.x, output object in 5.x)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find the projected embedding in {type(out).__name__}")
    return pooled


def load_clip(model_path: str, processor_path: str | None = None, device="cpu", dtype=torch.float32):
    """Load a ``CLIPModel`` (eval mode, frozen, on ``device`` / ``dtype``) and its processor.

    ``processor_path`` defaults to ``model_path``. Both are hub ids or local folders (the usual
    ``from_pretrained`` rules: offline, pass a local folder or have the files in the HF cache).
    """
    from transformers import AutoProcessor, CLIPModel

    from t2i_align.evaluation.rewards.tiny import resolve_reward_path

    model_path, processor_path = resolve_reward_path(model_path), resolve_reward_path(processor_path)
    model = CLIPModel.from_pretrained(model_path, dtype=dtype)
    model = model.to(device).eval().requires_grad_(False)
    processor = AutoProcessor.from_pretrained(processor_path or model_path)
    return model, processor


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def image_embeddings(model, processor, images: Sequence[Image.Image], normalize: bool = True) -> torch.Tensor:
    """Projected CLIP image embeddings [N, D] (float32, on the model's device), L2-normalised by default."""
    device, dtype = model_device_dtype(model)
    inputs = processor(images=to_rgb(images), return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device=device, dtype=dtype)
    emb = _features(model.get_image_features(pixel_values=pixel_values)).float()
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


@torch.no_grad()
def text_embeddings(model, processor, prompts: Sequence[str], normalize: bool = True) -> torch.Tensor:
    """Projected CLIP text embeddings [N, D] (float32), prompts truncated to 77 tokens."""
    device, _ = model_device_dtype(model)
    inputs = processor(
        text=list(prompts), padding=True, truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
    )
    kwargs = {"input_ids": inputs["input_ids"].to(device)}
    if "attention_mask" in inputs:
        kwargs["attention_mask"] = inputs["attention_mask"].to(device)
    emb = _features(model.get_text_features(**kwargs)).float()
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def pair_cosines(model, processor, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int) -> torch.Tensor:
    """cos(image_i, prompt_i) for every pair, float32 [N] on CPU, computed ``batch_size`` pairs at a time."""
    check_pairs(images, prompts)
    images, prompts = list(images), list(prompts)
    out = []
    for imgs, txts in zip(batched(images, batch_size), batched(prompts, batch_size)):
        img = image_embeddings(model, processor, imgs)
        txt = text_embeddings(model, processor, txts)
        out.append((img * txt).sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32)
