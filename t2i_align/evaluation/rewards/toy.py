"""Toy-world metrics as rewards (see t2i_align/toy/metrics.py): per image 1.0 or 0.0, so a
model's mean is a rate.

- toy_style: the image is in the target style (neon by default; `style="plain"` flips it);
- toy_colour: the image's colour is the one the prompt names;
- toy_shape: the image's shape is the one the prompt names.
Prompts that do not name a colour / shape score 0 on that reward.
"""

from collections.abc import Sequence

import torch
from PIL import Image

from t2i_align.toy.metrics import colour_of, parse_prompt, shape_of, style_of
from t2i_align.errors import InputError


class ToyReward:
    """reward(images, prompts) -> float32 [N] of 0 / 1."""

    def __init__(self, name: str, style: str = "neon"):
        if name not in ("toy_style", "toy_colour", "toy_shape"):
            raise InputError(f"unknown toy reward {name!r}")
        self.name, self.style = name, style

    def _one(self, image: Image.Image, prompt: str) -> float:
        if self.name == "toy_style":
            return float(style_of(image) == self.style)
        asked = parse_prompt(prompt)
        if self.name == "toy_colour":
            return float(asked["colour"] is not None and colour_of(image) == asked["colour"])
        return float(asked["shape"] is not None and shape_of(image) == asked["shape"])

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = [""] * len(images) if prompts is None else list(prompts)
        if len(prompts) != len(images):
            raise InputError(f"got {len(images)} images but {len(prompts)} prompts")
        return torch.tensor([self._one(im, p) for im, p in zip(images, prompts)], dtype=torch.float32)


def load_toy_reward(name: str, style: str = "neon", **_ignored) -> ToyReward:
    """Loader for the registry; device / dtype / batch_size arguments are accepted and ignored."""
    return ToyReward(name, style)
