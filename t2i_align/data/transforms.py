"""The pair transform: one resize / crop / flip applied identically to both images of a pair.

A preference pair compares two images of the same prompt; the model must see them under the
same augmentation or the pair carries a spurious difference (a flipped chosen image against
an unflipped rejected one). MaPO's released code applies one transform to both images;
Diffusion-DPO's flips each independently, a defect not copied here.

It also returns the SDXL micro-conditioning values (original size, crop corner) of the pair.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from t2i_align.errors import InputError


def short_side_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) after resizing so that the shorter side equals `resolution`."""
    if height <= width:
        return resolution, max(resolution, int(round(width * resolution / height)))
    return max(resolution, int(round(height * resolution / width))), resolution


def _resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """Bicubic resize; PIL widens the filter support when downscaling, i.e. antialiases."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=Image.Resampling.BICUBIC)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [-1, 1] (the VAE's input range)."""
    array = np.array(image, dtype=np.uint8, copy=True)  # copy: torch wants a writable buffer
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def pair_transform(
    image_w: Image.Image,
    image_l: Image.Image,
    resolution: int,
    random_crop: bool,
    random_flip: bool,
    rng: random.Random,
) -> dict:
    """Resize, crop and flip a (chosen, rejected) pair of RGB images identically.

    Steps: resize the chosen image so its shorter side is `resolution` (bicubic, antialiased);
    resize the rejected image to that same size (so pairs of different sizes / aspect ratios
    still line up); crop `resolution` x `resolution` at one corner for both (drawn from `rng`
    when `random_crop`, else centred); flip both horizontally with probability 0.5 when
    `random_flip`. Randomness comes only from `rng` (crop first, then flip), so the caller
    controls determinism.

    Returns {"pixels_w", "pixels_l": float tensors [3, R, R] in [-1, 1],
    "original_size_w", "original_size_l": (height, width) before resizing,
    "crop_top_left": (top, left) in the resized image, SDXL convention}.
    """
    if resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    original_w = (image_w.height, image_w.width)
    original_l = (image_l.height, image_l.width)

    height, width = short_side_size(*original_w, resolution)
    resized_w = _resize(image_w, height, width)
    resized_l = _resize(image_l, height, width)

    if random_crop:
        top = rng.randint(0, height - resolution)
        left = rng.randint(0, width - resolution)
    else:
        top = int(round((height - resolution) / 2.0))
        left = int(round((width - resolution) / 2.0))
    box = (left, top, left + resolution, top + resolution)
    crop_w = resized_w.crop(box)
    crop_l = resized_l.crop(box)

    if random_flip and rng.random() < 0.5:
        crop_w = crop_w.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop_l = crop_l.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Cropping at `left` then flipping equals flipping first and cropping at
        # width - left - resolution, so that is the crop corner of the flipped image.
        # diffusers' SDXL example once used `image.width - x1` on the *cropped* image
        # (issue huggingface/diffusers#6234); PR huggingface/diffusers#6547 fixed it by
        # flipping before resize/crop in examples/text_to_image/train_text_to_image_sdxl.py,
        # which gives exactly this value.
        left = width - left - resolution

    return {
        "pixels_w": _to_tensor(crop_w),
        "pixels_l": _to_tensor(crop_l),
        "original_size_w": original_w,
        "original_size_l": original_l,
        "crop_top_left": (top, left),
    }
