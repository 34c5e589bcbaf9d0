"""Prefix-pair preference data (MaPO, Hong et al. 2024, "Margin-aware Preference Optimization for
Aligning Diffusion Models without Reference", Pick-Style / Pick-Safety v1 dataset cards):

for each prompt p the base model draws chosen = model(chosen_prefix + p) and rejected =
model(rejected_prefix + p) from the SAME seed (same starting noise, so the pair differs by the
prefix, not by luck); the stored caption is the plain p. Presets:
  Pick-Style cartoon:    chosen "Disney style animated image. ", rejected "Realistic 8k image. "
  Pick-Style pixel art:  chosen "Pixel art style image. ",       rejected "Realistic 8k image. "
  Pick-Safety:           chosen "" (the plain prompt),            rejected "Sexual, nudity, +19 image. "

Every pair's seed is a function of (build seed, prompt index) only, so a build is the same
whatever the batch size, shard size, number of processes or interruptions.
"""

import hashlib
import io

import pyarrow as pa
import torch
from t2i_align.errors import InputError

PAIR_SCHEMA = pa.schema([
    ("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("chosen_prompt", pa.string()), ("rejected_prompt", pa.string()),
    ("chosen_prefix", pa.string()), ("rejected_prefix", pa.string()),
    ("model", pa.string()), ("seed", pa.int64()), ("prompt_index", pa.int64()),
    ("guidance_scale", pa.float64()), ("steps", pa.int64()), ("resolution", pa.int64()),
    ("chosen_score", pa.float64()), ("rejected_score", pa.float64()),
])


def pair_seed(build_seed: int, index: int) -> int:
    """A 31-bit seed for prompt `index` of a build with seed `build_seed`."""
    digest = hashlib.sha256(f"{build_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def encode_image(image, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """JPEG (as Pick-a-Pic's jpg_ columns) or PNG bytes."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    elif image_format == "png":
        image.save(buffer, format="PNG")
    else:
        raise InputError(f"unknown image_format {image_format!r}; choose jpeg or png")
    return buffer.getvalue()


def generate_with_seeds(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
                        resolution: int, negative_prompt: str | None = None) -> list:
    """One image per (prompt, seed), each from its own CPU generator (batch-independent)."""
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    from t2i_align.families import negative_prompt_kwargs, pipeline_call_kwargs

    kwargs = {**pipeline_call_kwargs(pipe), **negative_prompt_kwargs(pipe, negative_prompt, len(prompts))}
    return pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale, height=resolution,
                width=resolution, generator=generators, **kwargs).images


def prefix_pair_rows(pipe, prompts: list[str], indices: list[int], chosen_prefix: str, rejected_prefix: str,
                     build_seed: int, steps: int, guidance_scale: float, resolution: int, model_name: str,
                     batch_size: int = 4, image_format: str = "jpeg", reward=None, margin: float = 0.0,
                     negative_prompt: str | None = None, pairs_per_prompt: int = 1) -> list[dict]:
    """Rows (PAIR_SCHEMA) for the items prompts[i] with their global item indices (item i is
    pair i % pairs_per_prompt of prompt i // pairs_per_prompt; its seed comes from i); chosen is
    jpg_0 (label_0 = 1).

    reward: optional reward(images, prompts) model; a pair is kept only when the chosen image
    beats the rejected one by at least `margin` on the PLAIN prompt (a cheap stand-in for the
    VLM judge of MaPO v2)."""
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        seeds = [pair_seed(build_seed, i) for i in indices[start:start + batch_size]]
        chosen_prompts = [chosen_prefix + p for p in batch]
        rejected_prompts = [rejected_prefix + p for p in batch]
        # both sides of a pair in one pipeline call: same seeds, same batch statistics
        images = generate_with_seeds(pipe, chosen_prompts + rejected_prompts, seeds + seeds, steps, guidance_scale,
                                     resolution, negative_prompt)
        chosen, rejected = images[: len(batch)], images[len(batch):]
        scores_c = scores_r = [None] * len(batch)
        if reward is not None:
            scores_c = reward(chosen, batch).tolist()
            scores_r = reward(rejected, batch).tolist()
        for j, prompt in enumerate(batch):
            if reward is not None and scores_c[j] - scores_r[j] < margin:
                continue
            rows.append({
                "caption": prompt, "jpg_0": encode_image(chosen[j], image_format),
                "jpg_1": encode_image(rejected[j], image_format), "label_0": 1.0, "label_1": 0.0,
                "chosen_prompt": chosen_prompts[j], "rejected_prompt": rejected_prompts[j],
                "chosen_prefix": chosen_prefix, "rejected_prefix": rejected_prefix, "model": model_name,
                "seed": seeds[j], "prompt_index": indices[start + j] // pairs_per_prompt, "guidance_scale": float(guidance_scale),
                "steps": int(steps), "resolution": int(resolution),
                "chosen_score": scores_c[j], "rejected_score": scores_r[j]})
    return rows
