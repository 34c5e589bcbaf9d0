"""A process writing into a shared evaluation image cache (for the concurrency test).

Kept apart from the test module so the spawned processes import only this and sampling."""

import hashlib
from types import SimpleNamespace

import numpy as np
from PIL import Image

from t2i_align.evaluation.sampling import ModelKey, generate_cached

SHARED = [f"a shared prompt {j}" for j in range(4)]
SEEDS = [0, 1]
SIZE = 192  # noise PNGs of ~110 kB: slow enough to save that writers and the reader overlap
KEY = {"format": 1, "base": {"hub_id": "fake/model", "revision": "main"}, "lora": None, "dtype": "float32",
       "device": "cpu", "sampling": {"steps": 2, "guidance_scale": 1.0, "resolution": SIZE, "negative_prompt": None}}


class NoisePipe:
    """Stands in for a diffusers pipeline: one noise image per prompt, fixed by (prompt, seed)."""

    def __call__(self, prompt, generator, **_):  # called with prompt= as diffusers pipelines are
        images = []
        for prompt, g in zip(prompt, generator):
            seed = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) + g.initial_seed()
            pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            images.append(Image.fromarray(pixels))
        return SimpleNamespace(images=images)


def own_prompt(worker: int, round_: int) -> str:
    return f"worker {worker} round {round_}"


def write(cache_dir: str, worker: int, rounds: int, index_rounds: int, start) -> None:
    """`rounds` calls of generate_cached, each with the shared prompts and one prompt of its own,
    then `index_rounds` with one more prompt of its own and no seeds (prompt index merges only,
    back to back, where a merge without the lock loses entries most often)."""
    key = ModelKey(KEY, {"name": f"writer{worker}"})
    start.wait()
    pipe = NoisePipe()
    for r in range(rounds):
        generate_cached(pipe, key, SHARED + [own_prompt(worker, r)], SEEDS, cache_dir, batch_size=2)
    for r in range(rounds, rounds + index_rounds):
        generate_cached(pipe, key, [own_prompt(worker, r)], [], cache_dir)
