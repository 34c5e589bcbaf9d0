"""HPSv2 / HPSv2.1 (Human Preference Score v2, Wu et al. 2023, arXiv 2306.09341) rebuilt on ``open_clip`` 3.x.

The pip package ``hpsv2`` vendors an old open_clip fork and does not import cleanly beside a
current open_clip, so the scorer is rebuilt here from its parts (github tgxs002/HPSv2):

- Model: open_clip ``ViT-H-14`` (built with ``pretrained=None``, no download) whose weights are
  replaced by the HPS checkpoint (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``, a torch
  file holding ``{'state_dict': ...}``). The checkpoint path is a local file; nothing is fetched.
  Torch files are read with ``weights_only=True``; one that needs pickle is refused unless the
  loader's ``allow_pickle`` names it (see :mod:`.checkpoint_io`).
- Tokenizer: ``open_clip.get_tokenizer('ViT-H-14')`` (the BPE vocabulary bundled with
  open_clip, context length 77), as in the HPSv2 repo.
- Preprocessing (:func:`hps_preprocess`): the repo's ``preprocess_val`` is
  ``image_transform(224, is_train=False, resize_longest_max=True)`` in
  ``hpsv2/src/open_clip/transform.py``, i.e. in this order: ``_convert_to_rgb_or_rgba``,
  ``ToTensor()`` (uint8 PIL -> float [0, 1] tensor) FIRST, then ``ResizeMaxSize(224, fill=0)`` on
  that float tensor (torchvision ``F.resize`` of the LONGEST side to 224, bicubic, the other side
  ``round(side * 224 / longest)``; torchvision >= 0.17 antialiases tensors by default, passed
  explicitly here; no clamping, so bicubic overshoot beyond [0, 1] is kept), then ``F.pad`` with 0
  centred (left/top get ``pad // 2``), then ``Normalize`` with the OpenAI CLIP mean/std. It is
  *not* open_clip's default resize-shortest + centre-crop, and not a PIL resize of the uint8
  image (close, but a different transform: see the tests). Two deliberate differences, both
  for inputs the original cannot score: ResizeMaxSize skips resize AND padding when the longest
  side already equals 224, so a 224x112 image would stay non-square there (and fail in the ViT);
  here it is padded to 224x224 like every other size. RGBA stays 4-channel there (and fails in
  the ViT); here every image is converted to RGB.
- Score: the repo's benchmark (``hpsv2/evaluation.py``, e.g. ``evaluate_benchmark``:
  ``logits_per_image = image_features @ text_features.T * 100``) and the papers' tables report
  ``100 * cos(image_features, text_features)`` of the L2-normalised embeddings (no logit_scale),
  typically 20-35 ("27.5"); ``hpsv2/img_score.py`` returns the bare cosine. :class:`HPSv2Reward`
  returns ``100 * cos`` so that means can be read against the published numbers. v2 and v2.1
  scores are not comparable with each other, hence ``HPSv2Reward.name`` is ``"hpsv2"`` or
  ``"hpsv2.1"``.
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import torch
from PIL import Image
from t2i_align.errors import CheckpointMismatchError, InputError, InputNotFoundError

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
        raise InputError(f"unknown HPS version {version!r}; expected 'v2' or 'v2.1'")
    return _VERSION_NAMES[key]


def hps_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """HPSv2's evaluation transform for one PIL image -> float32 tensor ``[3, size, size]``.

    In the order of the repo's ``image_transform(..., resize_longest_max=True)``
    (``hpsv2/src/open_clip/transform.py``): RGB, ``to_tensor`` (float [0, 1]), then on that float
    tensor the longest side resized to ``size`` (torchvision ``F.resize``, bicubic,
    ``antialias=True``; the other side ``round(side * size / longest)``, at least 1), zero padding
    centred (``pad // 2`` on the left/top, the rest on the right/bottom), then OpenAI CLIP
    mean/std normalisation. Padding pixels therefore equal ``-mean / std`` per channel.
    """
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    if not isinstance(image, Image.Image):
        raise TypeError(f"hps_preprocess expects a PIL image, got {type(image).__name__}")
    tensor = F.to_tensor(image.convert("RGB"))  # ToTensor FIRST: the resize below runs on floats
    height, width = tensor.shape[1:]
    scale = size / float(max(height, width))
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) != (height, width):
        tensor = F.resize(tensor, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        tensor = F.pad(tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(tensor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def load_hps_state_dict(checkpoint: str, allow_pickle=None) -> dict[str, torch.Tensor]:
    """Read an HPS checkpoint: ``{'state_dict': sd}`` torch file, a bare state dict, or
    ``.safetensors``. A leading ``module.`` (DDP) is stripped from every key.

    Torch files load with ``weights_only=True``; one that needs pickle raises
    :class:`~.checkpoint_io.PickleNotAllowedError` unless ``allow_pickle`` names it.
    """
    from t2i_align.evaluation.rewards.checkpoint_io import read_weights

    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"HPS checkpoint not found: {path}")
    state = read_weights(path, allow_pickle=allow_pickle)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
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

    The value is ``100 * cos(image_embedding, text_embedding)`` (no logit scale), the number the
    HPSv2 benchmark (``hpsv2/evaluation.py``) and the papers report; ``description`` says so.
    """

    SCALE = 100.0

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
            raise InputError("batch_size must be >= 1")
        self.name = name
        self.description = f"{name}: 100 x cos(image, text) of the HPS open_clip embeddings (HPSv2 benchmark scale)"
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
                raise InputError(f"non-square image size {image_size} is not supported")
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
        return self.SCALE * (img * txt).sum(-1).cpu()

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(images) != len(prompts):
            raise InputError(f"got {len(images)} images but {len(prompts)} prompts")
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
    allow_pickle=None,
) -> HPSv2Reward:
    """Build an :class:`HPSv2Reward` from a local HPS checkpoint (no network access).

    ``checkpoint``: path to ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (or a bare
    state dict / ``.safetensors``). ``version``: ``"v2"`` or ``"v2.1"`` (sets ``name``).
    ``model_config``: an open_clip model config dict (``embed_dim``, ``vision_cfg``,
    ``text_cfg``) used instead of the built-in ``model_name`` config, e.g. for tiny test models.
    The state dict is loaded strictly; a mismatch raises with the offending keys.
    ``allow_pickle``: the checkpoint's path (or a list of paths) if it is a torch file that needs
    pickle and you trust it; without it such a file is refused (the released files do not need it).
    """
    name = _version_name(version)
    state = load_hps_state_dict(checkpoint, allow_pickle=allow_pickle)
    model, tokenizer = _build_model(model_name, model_config)
    # Buffers that are not persisted by every open_clip version (e.g. attn_mask) are tolerated.
    missing, unexpected = model.load_state_dict(state, strict=False)
    optional = {"attn_mask", "text.attn_mask"}
    missing = [k for k in missing if k not in optional]
    unexpected = [k for k in unexpected if k not in optional]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"HPS checkpoint {checkpoint} does not match open_clip model "
            f"{model_name if model_config is None else 'custom config'}: "
            f"missing={missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected={unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    return HPSv2Reward(model, tokenizer, name=name, device=device, dtype=dtype, batch_size=batch_size)
