"""Evaluation images: same seeds for every model, cached on disk, LoRA / UNet loading."""

import numpy as np

from t2i_align.evaluation.sampling import generate_cached, load_pipeline
from tests.training.helpers import train

PROMPTS = ["a red circle", "a blue square"]


def test_cache_second_run_generates_nothing(tmp_path):
    pipe = load_pipeline("tiny:sdxl")
    paths, made = generate_cached(pipe, "base", PROMPTS, [0, 1], tmp_path, steps=2, guidance_scale=1.0,
                                  resolution=32)
    assert made == 4 and all(p.is_file() for p in paths.values())
    again, made_again = generate_cached(pipe, "base", PROMPTS + ["a green triangle"], [0, 1], tmp_path,
                                        steps=2, guidance_scale=1.0, resolution=32)
    assert made_again == 2  # only the new prompt
    assert {k: v for k, v in again.items() if k[0] in PROMPTS} == paths


def test_same_seed_same_image_and_lora_changes_it(tmp_path):
    _, final = train(tmp_path / "run", ["method=dpo", "trainer.lora.enabled=true", "trainer.lr=5e-2"])
    base = load_pipeline("tiny:sdxl")
    aligned = load_pipeline("tiny:sdxl", lora=str(final))
    p_base, _ = generate_cached(base, "base", PROMPTS[:1], [3], tmp_path / "c", steps=2, guidance_scale=1.0,
                                resolution=32, batch_size=1)
    p_again, _ = generate_cached(base, "base2", PROMPTS[:1], [3], tmp_path / "c", steps=2, guidance_scale=1.0,
                                 resolution=32, batch_size=1)
    p_lora, _ = generate_cached(aligned, "lora", PROMPTS[:1], [3], tmp_path / "c", steps=2, guidance_scale=1.0,
                                resolution=32, batch_size=1)
    key = (PROMPTS[0], 3)
    from PIL import Image

    a, b, c = (np.asarray(Image.open(p[key]), dtype=np.int16) for p in (p_base, p_again, p_lora))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 0
