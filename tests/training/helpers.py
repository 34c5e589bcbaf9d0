"""Compose the real Hydra config in-process and run the training recipe on tiny models."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# Small and fast: 2 pairs per step, 16 generated pairs (15 after ties -> 7 batches an epoch).
FAST = ["trainer.max_steps=2", "trainer.batch_size=2", "data.num_generated=16",
        "trainer.checkpoint_every=0"]


# The tests' base: the tiny random model on generated pairs with the common trainer defaults
# (the no-argument default is the toy world, which has its own tests).
TEST_DEFAULTS = {"model": "tiny_sdxl", "data": "generated", "trainer": "default", "post_eval": "none"}


# The same base for `python -m t2i_align.train` subprocesses.
TINY_CLI = [f"{k}={v}" for k, v in TEST_DEFAULTS.items()]


def make_cfg(overrides: list[str], config_name: str = "train"):
    if config_name == "train" and not any(o.startswith("+exp=") for o in overrides):
        given = {o.split("=", 1)[0] for o in overrides}
        overrides = [f"{k}={v}" for k, v in TEST_DEFAULTS.items() if k not in given] + list(overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides)


def train(tmp_dir, overrides: list[str]):
    from t2i_align.training.recipe import run_training

    run_dir = Path(tmp_dir)
    final = run_training(make_cfg(FAST + overrides), run_dir)
    return run_dir, final


def read_metrics(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def final_weights(final_dir) -> dict[str, torch.Tensor]:
    final_dir = Path(final_dir)
    lora = final_dir / "pytorch_lora_weights.safetensors"
    return load_file(lora if lora.exists() else final_dir / "diffusion_pytorch_model.safetensors")
