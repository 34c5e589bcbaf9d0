"""HPSv2 / HPSv2.1 (Human Preference Score v2) rebuilt on ``open_clip`` 3.x.

The pip package ``hpsv2`` vendors an old open_clip fork and does not import cleanly beside a
current open_clip, so the scorer is rebuilt here from its parts:

- Model: open_clip ``ViT-H-14`` (built with ``pretrained=None``, no download) whose weights are
  replaced by the HPS checkpoint (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``, a torch
  file holding ``{'state_dict': ...}``). The checkpoint path is a local file; nothing is fetched.
- Tokenizer: ``open_clip.get_tokenizer('ViT-H-14')`` (the BPE vocabulary bundled with
  open_clip, context length 77), as in the HPSv2 repo.
- Preprocessing (:func:`hps_preprocess`): the HPSv2 repo's ``preprocess_val`` is open_clip 2.x's
  ``image_transform(..., is_train=False, resize_longest_max=True)``, i.e. ``ResizeMaxSize``:
  resize the LONGEST side to 224 (bicubic, other side ``round(side * 224 / longest)``), pad with
  0 (black) centred (left/top get ``pad // 2``), convert to RGB, ``ToTensor``, OpenAI CLIP
  mean/std normalisation. It is *not* open_clip's default resize-shortest + centre-crop.
  Checked bit-exact against that transform re-expressed with torchvision (see the tests). One
  deliberate difference: ResizeMaxSize skips resize AND padding when the longest side already
  equals 224, so e.g. a 224x112 image would stay non-square there (and fail in the ViT); here it
  is padded to 224x224 like every other size.
- Score: the repo (``hpsv2/img_score.py``, ``score.py``) calls ``model(image, text)`` whose
  ``image_features`` / ``text_features`` are L2-normalised, then takes
  ``diagonal(image_features @ text_features.T)``: the plain cosine similarity. It does NOT
  multiply by ``logit_scale`` or 100. :class:`HPSv2Reward` returns that cosine (typically about
  0.2-0.35); papers' tables report ``100 * cos`` (e.g. "27.5"). v2 and v2.1 scores are not
  comparable with each other, hence ``HPSv2Reward.name`` is ``"hpsv2"`` or ``"hpsv2.1"``.
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import torch
from PIL import Image

__all__ = ["HPSv2Reward", "load_hpsv2", "hps_preprocess", "load_hps_state_dict", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

from t2i_align.evaluation.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

_VERSION_NAMES = {
    "v2": "hpsv2",
    "v2.0": "hpsv2",
    "2": "hpsv2",
    "2.0": "hpsv2",
    "hpsv2": "hpsv2",
    "v2.1": "hpsv2.1",
    "2.1": "hpsv2.1",
    "hpsv2.1": "hpsv2.1",
}

_custom_counter = itertools.count()


def _version_name(version: str) -> str:
    key = str(version).strip().lower()
    if key not in _VERSION_NAMES:
        raise ValueError(f"unknown HPS version {version!r}; expected 'v2' or 'v2.1'")
    return _VERSION_NAMES[key]


def hps_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """HPSv2's evaluation transform for one PIL image -> float32 tensor ``[3, size, size]``.

    Longest side resized to ``size`` (bicubic; the other side ``round(side * size / longest)``,
    at least 1), zero (black) padding centred with ``pad // 2`` on the left/top and the rest on
    the right/bottom, scaled to [0, 1], then normalised with the OpenAI CLIP mean/std. Padding
    pixels therefore equal ``-mean / std`` per channel.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"hps_preprocess expects a PIL image, got {type(image).__name__}")
    image = image.convert("RGB")
    width, height = image.size
    scale = size / max(width, height)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    data = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8)
    tensor = data.view(size, size, 3).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean) / std


def load_hps_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    """Read an HPS checkpoint: ``{'state_dict': sd}`` torch file, a bare state dict, or
    ``.safetensors``. A leading ``module.`` (DDP) is stripped from every key."""
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HPS checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickled extras (e.g. optimizer objects) in old checkpoints
            if "weights_only" not in str(err) and "Weights only" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _build_model(model_name: str, model_config: dict | None):
    """Create the open_clip model (random init, no download) and its tokenizer."""
    import open_clip
    from open_clip import factory

    if model_config is None:
        model = open_clip.create_model(model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(model_name)
        return model, tokenizer
    # Register the custom config under a unique name only for the duration of construction.
    name = f"t2i_align-hps-custom-{next(_custom_counter)}"
    factory._MODEL_CONFIGS[name] = dict(model_config)
    try:
        model = open_clip.create_model(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
    finally:
        factory._MODEL_CONFIGS.pop(name, None)
    return model, tokenizer


class HPSv2Reward:
    """Callable HPSv2 scorer: ``reward(images, prompts) -> float32 [N]`` on CPU.

    The value is ``cos(image_embedding, text_embedding)`` as in the HPSv2 repo (no logit scale,
    not multiplied by 100); tables conventionally report ``100 * cos``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "hpsv2.1",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        image_size: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        if image_size is None:
            image_size = getattr(getattr(model, "visual", None), "image_size", 224)
        if isinstance(image_size, (tuple, list)):
            if image_size[0] != image_size[1]:
                raise ValueError(f"non-square image size {image_size} is not supported")
            image_size = image_size[0]
        self.image_size = int(image_size)

    @torch.no_grad()
    def _score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        pixels = torch.stack([hps_preprocess(im, self.image_size) for im in images])
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        img = self.model.encode_image(pixels).float()
        txt = self.model.encode_text(tokens).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (img * txt).sum(-1).cpu()

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if len(images) == 0:
            return torch.zeros(0, dtype=torch.float32)
        out = [
            self._score_batch(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out).to(torch.float32)

    def __repr__(self) -> str:
        return (
            f"HPSv2Reward(name={self.name!r}, device={self.device}, dtype={self.dtype}, "
            f"batch_size={self.batch_size}, image_size={self.image_size})"
        )


def load_hpsv2(
    checkpoint: str,
    version: str = "v2.1",
    model_name: str = "ViT-H-14",
    model_config: dict | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
) -> HPSv2Reward:
    """Build an :class:`HPSv2Reward` from a local HPS checkpoint (no network access).

    ``checkpoint``: path to ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (or a bare
    state dict / ``.safetensors``). ``version``: ``"v2"`` or ``"v2.1"`` (sets ``name``).
    ``model_config``: an open_clip model config dict (``embed_dim``, ``vision_cfg``,
    ``text_cfg``) used instead of the built-in ``model_name`` config, e.g. for tiny test models.
    The state dict is loaded strictly; a mismatch raises with the offending keys.
    """
    name = _version_name(version)
    state = load_hps_state_dict(checkpoint)
    model, tokenizer = _build_model(model_name, model_config)
    # Buffers that are not persisted by every open_clip version (e.g. attn_mask) are tolerated.
    missing, unexpected = model.load_state_dict(state, strict=False)
    optional = {"attn_mask", "text.attn_mask"}
    missing = [k for k in missing if k not in optional]
    unexpected = [k for k in unexpected if k not in optional]
    if missing or unexpected:
        raise RuntimeError(
            f"HPS checkpoint {checkpoint} does not match open_clip model "
            f"{model_name if model_config is None else 'custom config'}: "
            f"missing={missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected={unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    return HPSv2Reward(model, tokenizer, name=name, device=device, dtype=dtype, batch_size=batch_size)
