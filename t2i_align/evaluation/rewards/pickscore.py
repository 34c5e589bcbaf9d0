"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on human preferences.

Model ``yuvalkirstain/PickScore_v1`` (a ``transformers.CLIPModel``), processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (224 px, OpenAI mean/std).
score = logit_scale.exp() * cos(image_embeds, text_embeds) (about 20-23 for typical images);
P(A over B | prompt) = softmax over the two images' scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from .clip_common import check_pairs, load_clip, pair_cosines
from t2i_align.errors import InputError

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward:
    """Callable reward: ``reward(images, prompts) -> float32 [N]`` on CPU."""

    name = "pickscore"

    def __init__(self, model, processor, batch_size: int = 16):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.batch_size = batch_size

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().cpu())

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        cos = pair_cosines(self.model, self.processor, images, prompts, self.batch_size)
        return self.logit_scale * cos

    def preference(
        self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image], prompts: Sequence[str]
    ) -> torch.Tensor:
        """P(image A preferred over image B) per prompt, float32 [N]: softmax over the two scores.

        ``1 - preference(a, b, p)`` equals ``preference(b, a, p)``.
        """
        check_pairs(images_a, prompts)
        check_pairs(images_b, prompts)
        scores = torch.stack([self(images_a, prompts), self(images_b, prompts)], dim=-1)
        return scores.softmax(dim=-1)[:, 0]


def load_pickscore(
    model_path: str = PICKSCORE_MODEL,
    processor_path: str = PICKSCORE_PROCESSOR,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
) -> PickScoreReward:
    """Load PickScore (hub ids or local folders) on ``device`` / ``dtype``."""
    model, processor = load_clip(model_path, processor_path, device=device, dtype=dtype)
    return PickScoreReward(model, processor, batch_size=batch_size)
