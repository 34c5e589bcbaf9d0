"""A tiny random CLIP (real transformers classes, real CLIP tokenizer) saved once to the cache as
"tiny:clip": the stand-in reward backbone for offline runs and tests (scores carry no meaning)."""

import os
from pathlib import Path

import torch
from t2i_align.errors import InputError

TINY_CLIP_VERSION = "v1"
TINY_CLIP_IMAGE = 32


def build_tiny_clip(folder: Path) -> None:
    """Write a tiny CLIPModel and its CLIPProcessor (OpenAI normalisation) into `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from t2i_align.evaluation.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from t2i_align.models.clip_tokenizer import offline_clip_tokenizer

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=TINY_CLIP_IMAGE, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    torch.random.set_rng_state(state)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": TINY_CLIP_IMAGE},
                                           crop_size={"height": TINY_CLIP_IMAGE, "width": TINY_CLIP_IMAGE},
                                           image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD)),
        tokenizer=offline_clip_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def resolve_reward_path(path: str | None) -> str | None:
    """'tiny:clip' -> the cached tiny CLIP folder (built on first use); other paths unchanged."""
    if not path or not str(path).startswith("tiny:"):
        return path
    if path != "tiny:clip":
        raise InputError(f"unknown tiny reward model {path!r}; known: tiny:clip")
    from t2i_align.models.clip_tokenizer import cache_dir

    folder = cache_dir() / "tiny" / f"clip-{TINY_CLIP_VERSION}"
    if not (folder / "config.json").is_file():
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        build_tiny_clip(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: use its folder
            pass
    return str(folder)
