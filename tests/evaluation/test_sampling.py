"""Evaluation images: same seeds for every model, cached on disk, LoRA / UNet loading."""

import numpy as np
from PIL import Image

from t2i_align.evaluation.sampling import generate_cached, load_pipeline, model_cache_key
from tests.training.helpers import train

PROMPTS = ["a red circle", "a blue square"]
SETTINGS = {"steps": 2, "guidance_scale": 1.0, "resolution": 32}


def test_cache_second_run_generates_nothing(tmp_path):
    pipe = load_pipeline("tiny:sdxl")
    key = model_cache_key({"name": "base"}, "tiny:sdxl", SETTINGS)
    paths, made = generate_cached(pipe, key, PROMPTS, [0, 1], tmp_path)
    assert made == 4 and all(p.is_file() for p in paths.values())
    again, made_again = generate_cached(pipe, key, PROMPTS + ["a green triangle"], [0, 1], tmp_path)
    assert made_again == 2  # only the new prompt
    assert {k: v for k, v in again.items() if k[0] in PROMPTS} == paths


def test_same_seed_same_image_and_lora_changes_it(tmp_path):
    _, final = train(tmp_path / "run", ["method=dpo", "trainer.lora.enabled=true", "trainer.lr=5e-2"])
    base = load_pipeline("tiny:sdxl")
    aligned = load_pipeline("tiny:sdxl", lora=str(final))
    base_key = model_cache_key({}, "tiny:sdxl", SETTINGS)
    lora_key = model_cache_key({"lora": str(final)}, "tiny:sdxl", SETTINGS)
    p_base, _ = generate_cached(base, base_key, PROMPTS[:1], [3], tmp_path / "c", batch_size=1)
    # another cache and another batch composition: the same starting noise, so the same image
    p_again, made = generate_cached(base, base_key, PROMPTS[::-1], [5, 3], tmp_path / "c2", batch_size=3)
    p_lora, _ = generate_cached(aligned, lora_key, PROMPTS[:1], [3], tmp_path / "c", batch_size=1)
    assert made == 4
    key = (PROMPTS[0], 3)
    a, b, c = (np.asarray(Image.open(p[key]), dtype=np.int16) for p in (p_base, p_again, p_lora))
    assert np.abs(a - b).max() <= 1  # batch size may change float rounding, not the image
    assert np.abs(a - c).max() > 0
