"""ImageReward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation") rebuilt on ``transformers``' BLIP classes.

The pip package ``image-reward`` does not work with current libraries, so the scorer is rebuilt
from its source (github THUDM/ImageReward: ``ImageReward/ImageReward.py``, ``utils.py`` and the
BLIP files ``models/BLIP/blip_pretrain.py``, ``blip.py``, ``med.py``, ``vit.py``):

- Checkpoint ``ImageReward.pt`` (https://huggingface.co/THUDM/ImageReward/blob/main/ImageReward.pt),
  a plain state dict: ``blip.visual_encoder.*`` (BLIP ViT-L/16: 224 px, width 1024, 24 layers,
  16 heads, LayerNorm eps 1e-6, final norm ``norm``), ``blip.text_encoder.*`` (BLIP ``med.py``
  BERT-base: word + position embeddings only, a cross-attention block per layer whose key/value
  read the 1024-wide image tokens, no pooler), ``mlp.layers.*`` (768-1024-128-64-16-1, no
  activations, the LAION aesthetic head layout). ``blip.vision_proj/text_proj`` and the
  ``embeddings.position_ids`` buffer are in the file but unused by the score; they are skipped.
  The original loads with ``strict=False``; here every other key must map (errors name it).
- Towers: ``BlipVisionModel`` is the BLIP ViT (fused ``qkv`` with bias, exact GELU, pre-norm,
  ``post_layernorm`` on all tokens = vit.py's ``norm``), keys renamed by :func:`map_checkpoint_keys`.
  ``BlipTextModel`` is transformers' port of ``med.py``, same key names; its config field
  ``encoder_hidden_size`` sets the cross-attention key/value input width (1024), so no layer
  swapping is needed. (``BertModel`` 5.x cannot be used: it only builds cross-attention for
  ``is_decoder=True``, which makes self-attention causal; ImageReward's text encoder is
  bidirectional, i.e. BlipTextModel built with cross-attention and run with ``is_decoder=False``.)
- Tokenizer: ``BertTokenizer`` bert-base-uncased + ``[DEC]`` as bos + ``[ENC]`` as additional
  special token (vocab 30524), ``padding='max_length', truncation=True, max_length=35``.
  ``[ENC]``: ``ImageReward.score`` / ``inference_rank`` (and the training ``encode_data``) pass
  ``input_ids`` unchanged, so the first token stays ``[CLS]``; unlike BLIP's ITM head, nothing
  is replaced by ``enc_token_id``. This module does the same (``enc_token_id`` is only recorded).
- Preprocessing (:func:`image_reward_preprocess`): Resize shortest side to 224 (bicubic),
  CenterCrop 224, convert to RGB (after the crop, as in the source), ToTensor, OpenAI CLIP mean/std.
- Score: CLS feature of the text encoder run with cross-attention to all image tokens (mask of
  ones), ``mlp`` in float32, ``(reward - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from .aesthetic import AestheticMLP
from .clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, batched, check_pairs
from t2i_align.errors import CheckpointMismatchError, InputError

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT_FILENAME = "ImageReward.pt"
CHECKPOINT_URL = "https://huggingface.co/THUDM/ImageReward/blob/main/ImageReward.pt"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35
VISION_DEFAULTS = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
TEXT_DEFAULTS = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                     max_position_embeddings=512, pad_token_id=0)
# med_config.json fields with no effect on scoring (dropouts, init, BERT's unused token types);
# encoder_width is always the vision width, as in blip_pretrain.py
_MED_IGNORED = {"architectures", "model_type", "attention_probs_dropout_prob", "hidden_dropout_prob",
                "initializer_range", "type_vocab_size", "add_cross_attention", "encoder_width"}
UNUSED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
# (checkpoint prefix, model prefix, [(checkpoint sub-key, model sub-key)]); "{i}" = layer index
_KEY_RULES = (
    ("blip.visual_encoder.", "vision.", (
        ("cls_token", "embeddings.class_embedding"), ("pos_embed", "embeddings.position_embedding"),
        ("patch_embed.proj.", "embeddings.patch_embedding."),
        ("blocks.{i}.norm1.", "encoder.layers.{i}.layer_norm1."),
        ("blocks.{i}.norm2.", "encoder.layers.{i}.layer_norm2."),
        ("blocks.{i}.attn.qkv.", "encoder.layers.{i}.self_attn.qkv."),
        ("blocks.{i}.attn.proj.", "encoder.layers.{i}.self_attn.projection."),
        ("blocks.{i}.mlp.", "encoder.layers.{i}.mlp."), ("norm.", "post_layernorm."))),
    ("blip.text_encoder.", "text.", (("", ""),)),
    ("mlp.layers.", "mlp.layers.", (("", ""),)),
)


def _rename(key: str, reverse: bool = False) -> str | None:
    """Checkpoint key -> model key (``reverse``: model -> checkpoint); None if no rule applies."""
    for src_prefix, dst_prefix, subs in _KEY_RULES:
        if reverse:
            src_prefix, dst_prefix, subs = dst_prefix, src_prefix, [(b, a) for a, b in subs]
        if not key.startswith(src_prefix):
            continue
        rest = key[len(src_prefix):]
        for src, dst in subs:
            pattern = re.escape(src).replace(re.escape("{i}"), r"(\d+)")
            m = re.match(pattern + ("" if src.endswith(".") or not src else "$"), rest)
            if m:
                return dst_prefix + dst.replace("{i}", m.group(1) if m.groups() else "") + rest[m.end():]
    return None


def map_checkpoint_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename ImageReward.pt keys to :class:`ImageRewardModel` keys; returns (mapped, unknown keys).

    Known-unused keys (:data:`UNUSED_KEYS`) are dropped; keys no rule covers are returned as unknown.
    """
    mapped, unknown = {}, []
    for key, value in state.items():
        if key.startswith(UNUSED_KEYS):
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    return mapped, unknown


class ImageRewardModel(nn.Module):
    """BLIP ViT + BLIP text encoder with cross-attention + reward MLP; forward -> normalised score [N]."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticMLP(text_config.hidden_size)  # same layout as ImageReward's MLP

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts, is_decoder=False)
        feature = out.last_hidden_state[:, 0, :].float()
        reward = self.mlp(feature.to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()
        return (reward - REWARD_MEAN) / REWARD_STD

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load the original checkpoint's state dict; any unmapped, unexpected or missing key raises."""
        mapped, unknown = map_checkpoint_keys(state)
        own = self.state_dict().keys()
        unexpected = unknown + [_rename(k, reverse=True) for k in mapped if k not in own]
        missing = [_rename(k, reverse=True) or k for k in own if k not in mapped]
        if unexpected or missing:
            raise CheckpointMismatchError(f"ImageReward checkpoint does not match the model: unexpected keys {unexpected}, "
                               f"missing keys {missing}")
        self.load_state_dict(mapped, strict=True)


def image_reward_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """ImageReward's ``_transform(size)``: shortest side -> ``size`` (bicubic), centre crop, RGB,
    [0, 1], OpenAI CLIP mean/std. Returns float32 ``[3, size, size]``."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected PIL.Image.Image, got {type(image).__name__}")
    image = F.center_crop(F.resize(image, size, interpolation=InterpolationMode.BICUBIC), size).convert("RGB")
    return F.normalize(F.to_tensor(image), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _text_kwargs(med_config) -> dict:
    """BlipTextConfig kwargs from a med_config dict or JSON file (defaults: ImageReward's BERT-base)."""
    if isinstance(med_config, (str, pathlib.Path)):
        med_config = json.loads(pathlib.Path(med_config).read_text())
    med_config = dict(med_config or {})
    bad = set(med_config) - set(TEXT_DEFAULTS) - _MED_IGNORED
    if bad:
        raise InputError(f"unknown med_config keys {sorted(bad)}; known: {sorted(TEXT_DEFAULTS)}")
    return {**TEXT_DEFAULTS, **{k: v for k, v in med_config.items() if k in TEXT_DEFAULTS}}


def build_model(med_config=None, vision_config: dict | None = None) -> ImageRewardModel:
    """Randomly initialised ImageReward model; sizes default to the real ones."""
    from transformers import BlipTextConfig, BlipVisionConfig

    bad = set(vision_config or {}) - set(VISION_DEFAULTS)
    if bad:
        raise InputError(f"unknown vision_config keys {sorted(bad)}; known: {sorted(VISION_DEFAULTS)}")
    vision = BlipVisionConfig(**{**VISION_DEFAULTS, **(vision_config or {})})
    text = BlipTextConfig(**_text_kwargs(med_config), encoder_hidden_size=vision.hidden_size, is_decoder=True,
                          bos_token_id=None, eos_token_id=None, sep_token_id=None)
    return ImageRewardModel(vision, text)


def load_tokenizer(tokenizer_path: str = "bert-base-uncased"):
    """BLIP's ``init_tokenizer``: BERT tokenizer + ``[DEC]`` (bos) + ``[ENC]``; sets ``enc_token_id``."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(tokenizer_path)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
    return tokenizer


def default_checkpoint_path() -> pathlib.Path:
    from t2i_align.models.clip_tokenizer import cache_dir

    return cache_dir() / "image_reward" / CHECKPOINT_FILENAME


def load_checkpoint(checkpoint_path=None, allow_pickle=None) -> dict[str, torch.Tensor]:
    """State dict from a local file (``.pt`` or ``.safetensors``), the default cache path, or the hub
    id ``"THUDM/ImageReward"`` (downloaded with ``huggingface_hub``).

    Torch files load with ``weights_only=True``; one that needs pickle raises
    :class:`~.checkpoint_io.PickleNotAllowedError` unless ``allow_pickle`` names it (its path, or
    the hub id it was downloaded for).
    """
    from .checkpoint_io import locate_checkpoint, read_weights

    path, aliases = locate_checkpoint(checkpoint_path, HUB_REPO, CHECKPOINT_FILENAME, default_checkpoint_path(),
                                      "ImageReward", "checkpoint_path", CHECKPOINT_URL)
    state = read_weights(path, allow_pickle=allow_pickle, aliases=aliases)
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state["state_dict"] if isinstance(state.get("state_dict"), dict) else state


class ImageRewardReward:
    """Callable reward: ``reward(images, prompts) -> float32 [N]`` on CPU (normalised ImageReward score)."""

    name = "image_reward"

    def __init__(self, model: ImageRewardModel, tokenizer, batch_size: int = 16):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model.eval().requires_grad_(False), tokenizer, batch_size
        self.image_size = int(model.vision.config.image_size)
        self.enc_token_id = getattr(tokenizer, "enc_token_id", None)  # recorded, not used (see module doc)

    @torch.no_grad()
    def _score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        weight = self.model.vision.embeddings.patch_embedding.weight
        pixels = torch.stack([image_reward_preprocess(im, self.image_size) for im in images])
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                                return_tensors="pt")
        return self.model(pixels.to(device=weight.device, dtype=weight.dtype), tokens["input_ids"].to(weight.device),
                          tokens["attention_mask"].to(weight.device)).float().cpu()

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        check_pairs(images, prompts)
        images, prompts = list(images), list(prompts)
        chunks = zip(batched(images, self.batch_size), batched(prompts, self.batch_size))
        out = [self._score_batch(imgs, txts) for imgs, txts in chunks]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32)


def load_image_reward(checkpoint_path=None, tokenizer_path: str = "bert-base-uncased", device="cpu",
                      dtype: torch.dtype = torch.float32, batch_size: int = 16, med_config=None,
                      vision_config: dict | None = None, allow_pickle=None) -> ImageRewardReward:
    """Load ImageReward-v1.0 on ``device`` / ``dtype`` (the reward MLP stays float32).

    ``checkpoint_path``: local ``ImageReward.pt``, ``"THUDM/ImageReward"`` (hub download) or None
    (``$T2I_ALIGN_CACHE/image_reward/ImageReward.pt``). ``tokenizer_path``: hub id or folder of a
    BERT tokenizer ([DEC]/[ENC] are added here). ``med_config`` (dict or med_config.json path) and
    ``vision_config`` (dict) override the text / vision sizes, e.g. for tiny test models.
    ``allow_pickle``: the checkpoint's path (or hub id) if it is a torch file that needs pickle and
    you trust it; without it such a file is refused.
    """
    state = load_checkpoint(checkpoint_path, allow_pickle=allow_pickle)
    model = build_model(med_config, vision_config)
    model.load_checkpoint_state(state)
    tokenizer = load_tokenizer(tokenizer_path)
    if len(tokenizer) > model.text.config.vocab_size:
        raise InputError(f"tokenizer has {len(tokenizer)} tokens, text encoder vocab is {model.text.config.vocab_size}")
    model = model.to(device=device, dtype=dtype)
    model.mlp.float()
    return ImageRewardReward(model, tokenizer, batch_size=batch_size)
