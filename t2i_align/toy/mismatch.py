"""Reference mismatch in the toy world: preference sets whose chosen images lie near to or far from
what the base model draws.

MaPO's central claim (Hong et al. 2024, arXiv 2406.06424, sections 1 and 3) is that a reference
model hurts when the preferred data is far from the reference's own distribution ("reference
mismatch"), and that reference-free training then wins. The toy study tests it with two levels:

- ``low``: the toy Pick-Style set as built: chosen = toy_sdxl("neon style: " + p), rejected =
  toy_sdxl("plain style: " + p), same seed. The base draws the chosen images itself when prompted.
- ``high``: the same rows, with every chosen image replaced by a procedural render that the base
  never draws: the prompt's colour / shape / size in a neon variant on a *textured* dark background
  (per-pixel noise up to 40 of 255, still dark for the style metric), at a random position of its
  own. Its caption, rejected image and labels are unchanged.

How far each level is from the base is measured, not assumed (``denoising_gap``): the base's mean
denoising error on the chosen images minus that on the rejected ones, under the shared (plain)
caption, over a fixed grid of timesteps and fixed noise. The rejected images are the base's own
plain drawings, so the gap is how much less the base "expects" the chosen images (a diffusion
ELBO difference up to weighting).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_align.toy.metrics import parse_prompt
from t2i_align.toy.world import SIZES, render

LEVELS = ("low", "high")
TEXTURE_MAX = 48  # background noise amplitude of the high-mismatch renders (dark: < 0.2 * 255)
TEXTURE_BLOCK = 4  # noise cells of 4x4 pixels: coarse enough to survive the VAE (per-pixel noise does not)


def textured_neon(colour: str, shape: str, size: str, rng: random.Random, image_size: int = 32,
                  block: int = TEXTURE_BLOCK) -> Image.Image:
    """The neon render of (colour, shape, size) at a random position, its black background replaced
    by uniform noise in [0, TEXTURE_MAX] where the render is dark. The base never saw such
    backgrounds, so these chosen images are far from anything it draws."""
    frac = rng.uniform(*SIZES[size])
    half = frac / 2
    scene = {"colour": colour, "shape": shape, "size": size, "frac": frac,
             "cx": rng.uniform(half + 0.05, 1 - half - 0.05), "cy": rng.uniform(half + 0.05, 1 - half - 0.05),
             "jitter": rng.uniform(-8, 8)}
    pixels = np.asarray(render(scene, "neon", image_size)).astype(np.int16)
    cells = -(-image_size // block)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, TEXTURE_MAX + 1, (cells, cells))
    noise = noise.repeat(block, 0).repeat(block, 1)[:image_size, :image_size]
    dark = pixels.max(axis=2) < TEXTURE_MAX
    pixels[dark] = np.maximum(pixels[dark], noise[dark][:, None])
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _size_word(prompt: str) -> str:
    words = prompt.lower().replace(",", " ").split()
    return next((w for w in words if w in SIZES), "medium")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def build_high_mismatch(source: Path, out: Path, seed: int = 0, block: int = TEXTURE_BLOCK) -> Path:
    """Copy the built toy set at `source` to `out`, replacing each chosen image (the jpg column whose
    label is 1) by ``textured_neon`` of the row's caption; returns `out`. Idempotent: a finished
    `out` (with build_info.json) is returned as it is; written to a temporary folder, then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, out = Path(source), Path(out)
    if (out / "build_info.json").is_file():
        return out
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    row_index = 0
    for shard in sorted((source / "data").glob("*.parquet")):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        for row in rows:
            asked = parse_prompt(row["caption"])
            rng = random.Random(f"{seed}-{row_index}")
            image = textured_neon(asked["colour"], asked["shape"], _size_word(row["caption"]), rng, block=block)
            column = "jpg_0" if row["label_0"] == 1 else "jpg_1"
            value = row[column]
            row[column] = {**value, "bytes": _png(image)} if isinstance(value, dict) else _png(image)
            row_index += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp / "data" / shard.name)
    info = {"source": str(source), "seed": seed, "rows": row_index,
            "chosen_images": f"textured neon renders (toy/mismatch.py, background noise <= {TEXTURE_MAX} in {block}x{block} cells)"}
    (tmp / "build_info.json").write_text(json.dumps(info, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def denoising_gap(model_path: str, data_folder: Path, timesteps=(100, 300, 500, 700, 900), max_pairs: int = 96,
                  seed: int = 0, caption_prefix: str = "") -> dict:
    """The base model's mean denoising error (its own prediction target, v for toy_sdxl) on chosen
    minus rejected images of `data_folder`, under caption_prefix + the row's caption, at `timesteps`
    with fixed noise. With no prefix: how far the chosen images are from what the base draws for
    the training caption; with "neon style: ": whether the base can draw them even when asked.
    Returns {"chosen": E_chosen, "rejected": E_rejected, "gap": E_chosen - E_rejected, "pairs": n}."""
    import pyarrow.parquet as pq
    import torch

    from t2i_align.models.loading import load_parts
    from t2i_align.families import get_family
    from t2i_align.noising.forward import diffusion_target

    parts = load_parts(model_path)
    rows = [r for shard in sorted((Path(data_folder) / "data").glob("*.parquet"))
            for r in pq.read_table(shard).to_pylist()][:max_pairs]

    def pixels(value) -> torch.Tensor:
        data = value["bytes"] if isinstance(value, dict) else value
        array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 127.5 - 1
        return torch.from_numpy(array).permute(2, 0, 1)

    chosen = torch.stack([pixels(r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"]) for r in rows])
    rejected = torch.stack([pixels(r["jpg_1"] if r["label_0"] == 1 else r["jpg_0"]) for r in rows])
    captions = [caption_prefix + r["caption"] for r in rows]
    generator = torch.Generator().manual_seed(seed)
    errors = {}
    with torch.no_grad():
        family = get_family(parts.family)
        res = chosen.shape[-1]
        sizes = torch.tensor([(res, res)] * len(rows))
        cond = family.conditioning(family.encode_prompts(captions, parts.text_encoders, parts.tokenizers),
                                   original_sizes_w=sizes, original_sizes_l=sizes,
                                   crop_top_left=torch.zeros(len(rows), 2, dtype=torch.long), with_rejected=False,
                                   resolution=res, time_ids="fixed", device=parts.unet.device)
        latents = {name: parts.vae.encode(images).latent_dist.mean * parts.vae.config.scaling_factor
                   for name, images in (("chosen", chosen), ("rejected", rejected))}
        noises = [torch.randn(latents["chosen"].shape, generator=generator) for _ in timesteps]
        for name, x0 in latents.items():
            total = 0.0
            for t, noise in zip(timesteps, noises):
                tt = torch.full((x0.shape[0],), t, dtype=torch.long)
                noisy = parts.noise_scheduler.add_noise(x0, noise, tt)
                target = diffusion_target(parts.noise_scheduler, x0, noise, tt, parts.prediction_type)
                pred = family.predict(parts.unet, noisy, tt, cond)
                total += (pred - target).pow(2).mean().item()
            errors[name] = total / len(timesteps)
    return {"chosen": errors["chosen"], "rejected": errors["rejected"],
            "gap": errors["chosen"] - errors["rejected"], "pairs": len(rows)}
