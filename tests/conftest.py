"""Shared fixtures for the whole suite. Offline by construction: the hub and wandb are switched
off before any library is imported.

- ``t2i_cache`` (session, autouse): points ``T2I_ALIGN_CACHE`` at a temporary folder so no
  test ever writes to ``~/.cache/t2i_align``; restores the previous value afterwards.
- ``tiny_dirs`` (session): the three tiny pipelines materialised once, kind -> folder.
- ``unet_inputs`` (session): a factory making seeded UNet inputs for a tiny UNet.
- ``perturb_lora`` (session): a function filling every LoRA matrix with seeded random values.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def t2i_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i_align_cache")
    previous = os.environ.get("T2I_ALIGN_CACHE")
    os.environ["T2I_ALIGN_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("T2I_ALIGN_CACHE", None)
    else:
        os.environ["T2I_ALIGN_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_dirs(t2i_cache):
    from t2i_align.models.tiny import TINY_KINDS, resolve_model_path

    return {kind: resolve_model_path(f"tiny:{kind}") for kind in TINY_KINDS}


def _make_unet_inputs(unet, batch: int = 2, seed: int = 0) -> dict:
    """Seeded keyword inputs (sample, timestep, encoder_hidden_states[, added_cond_kwargs]) for ``unet``."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    size = cfg.sample_size
    inputs = {
        "sample": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "timestep": torch.randint(0, 1000, (batch,), generator=g),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).repeat(batch, 1),
        }
    return inputs


@pytest.fixture(scope="session")
def unet_inputs():
    return _make_unet_inputs


def _perturb_lora(unet, seed: int = 1, scale: float = 0.1) -> None:
    """Seeded random non-zero values in every LoRA matrix (A and B), as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="session")
def perturb_lora():
    return _perturb_lora
