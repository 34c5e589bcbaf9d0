"""pair_transform: one resize / crop / flip for both images, SDXL sizes and crop corner."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_align.data.transforms import pair_transform


def _gradient(height, width):
    """An asymmetric image: red grows left to right, green top to bottom."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 60)], -1).astype(np.uint8))


def _find_flip_seed(flip: bool, random_crop: bool) -> int:
    """A seed whose rng (after the two crop draws, if any) does / does not flip."""
    for seed in range(100):
        rng = random.Random(seed)
        if random_crop:
            rng.randint(0, 1), rng.randint(0, 1)
        if (rng.random() < 0.5) == flip:
            return seed
    raise AssertionError


def test_same_image_gives_identical_tensors():
    image = _gradient(50, 80)
    for seed in range(6):
        out = pair_transform(image, image.copy(), 32, True, True, random.Random(seed))
        assert torch.equal(out["pixels_w"], out["pixels_l"])
        assert out["pixels_w"].shape == (3, 32, 32) and out["pixels_w"].dtype == torch.float32
        assert out["pixels_w"].min() >= -1 and out["pixels_w"].max() <= 1


def test_sizes_and_centre_crop_of_non_square_image():
    out = pair_transform(_gradient(50, 100), _gradient(50, 100), 32, False, False, random.Random(0))
    assert out["original_size_w"] == (50, 100) and out["original_size_l"] == (50, 100)
    assert out["crop_top_left"] == (0, 16)  # resized to 32 x 64, centred crop
    tall = pair_transform(_gradient(100, 40), _gradient(100, 40), 32, False, False, random.Random(0))
    assert tall["crop_top_left"] == (24, 0)  # resized to 80 x 32


def test_random_crop_corner_matches_pixels():
    image = _gradient(40, 120)  # resized to 32 x 96
    reference = np.asarray(image.resize((96, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    corners = set()
    for seed in range(8):
        out = pair_transform(image, image, 32, True, False, random.Random(seed))
        top, left = out["crop_top_left"]
        corners.add(left)
        expected = torch.from_numpy(reference[top:top + 32, left:left + 32]).permute(2, 0, 1)
        assert torch.allclose(out["pixels_w"], expected, atol=1e-6)
    assert len(corners) > 1


@pytest.mark.parametrize("random_crop", [False, True])
def test_flip_is_shared_and_sdxl_crop_left(random_crop):
    image_w, image_l = _gradient(40, 120), _gradient(40, 120).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    seed = _find_flip_seed(True, random_crop)
    plain = pair_transform(image_w, image_l, 32, random_crop, False, random.Random(seed))
    flipped = pair_transform(image_w, image_l, 32, random_crop, True, random.Random(seed))
    assert torch.equal(flipped["pixels_w"], plain["pixels_w"].flip(-1))
    assert torch.equal(flipped["pixels_l"], plain["pixels_l"].flip(-1))
    top, left = plain["crop_top_left"]
    assert flipped["crop_top_left"] == (top, 96 - left - 32)  # resized width 96
    # the reported corner is where the crop sits in the flipped resized image
    resized = np.asarray(image_w.resize((96, 32), Image.Resampling.BICUBIC).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    new_left = flipped["crop_top_left"][1]
    expected = torch.from_numpy(resized[top:top + 32, new_left:new_left + 32].astype(np.float32) / 127.5 - 1)
    assert torch.allclose(flipped["pixels_w"], expected.permute(2, 0, 1), atol=1e-6)
    seed = _find_flip_seed(False, random_crop)  # random_flip on, but this draw does not flip
    unflipped = pair_transform(image_w, image_l, 32, random_crop, True, random.Random(seed))
    reference = pair_transform(image_w, image_l, 32, random_crop, False, random.Random(seed))
    assert unflipped["crop_top_left"] == reference["crop_top_left"]
    assert torch.equal(unflipped["pixels_w"], reference["pixels_w"])


def test_rejected_of_other_size_is_resized_to_chosen():
    image_w, image_l = _gradient(64, 64), _gradient(48, 96)
    out = pair_transform(image_w, image_l, 32, False, False, random.Random(0))
    assert out["original_size_w"] == (64, 64) and out["original_size_l"] == (48, 96)
    assert out["crop_top_left"] == (0, 0) and out["pixels_l"].shape == (3, 32, 32)
    expected = np.asarray(image_l.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(out["pixels_l"], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)
