"""How much noise InPO's inversion leaves in the latents it trains on, toy_sdxl vs toy_sd3.

InPO trains on x_t = Inv(x_0), the frozen reference's inversion of each image, with the noise the
inversion implies as the target. This prints the std of that implied noise (1 for the forward
process the models were trained on) and the reference's error on the inverted latents next to its
error on forward-noised ones, on toy images rendered by the toy world (half neon, half plain):

    python scripts/inversion_noise.py [--images 16] [--seed 0]

toy_sdxl: DDIM inversion (noising/ddim_inversion.py, 10 steps, eta 0 and 0.1), implied epsilon.
toy_sd3: Euler ODE inversion (noising/flow.py, 10 and 50 steps), implied eps = (x_sigma - (1 - sigma) x_0) / sigma.
"""

import argparse
import random

import numpy as np
import torch

from t2i_align.families import get_family
from t2i_align.models.loading import load_parts
from t2i_align.noising.ddim_inversion import ddim_invert, implied_noise
from t2i_align.noising.flow import euler_invert, implied_targets
from t2i_align.toy import world


def toy_batch(count: int, seed: int):
    rng = random.Random(seed)
    images, captions = [], []
    for i in range(count):
        scene = world.sample_scene(rng)
        images.append(world.render(scene, "neon" if i % 2 == 0 else "plain"))
        captions.append(world.describe(scene, 0))
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1 for im in images])
    return pixels, captions


def prepared(model_path: str, pixels, captions, generator):
    parts = load_parts(model_path)
    family = get_family(parts.family)
    n = pixels.shape[0]
    latents = family.encode_latents(parts.vae, pixels, generator)
    text = family.encode_prompts(captions, parts.text_encoders, parts.tokenizers)
    sizes = torch.tensor([[pixels.shape[-1]] * 2] * n)
    cond = family.conditioning(text, original_sizes_w=sizes, original_sizes_l=sizes, crop_top_left=torch.zeros(n, 2),
                               with_rejected=False, resolution=pixels.shape[-1], time_ids="fixed", device="cpu")
    model = parts.unet.eval()
    return parts, latents, lambda x, t: family.predict(model, x, t, cond)


@torch.no_grad()
def unet_rows(pixels, captions, generator):
    parts, latents, predict = prepared("toy:sdxl", pixels, captions, generator)
    sched, n = parts.noise_scheduler, latents.shape[0]
    for t in (200, 500, 800):
        timesteps = torch.full((n,), t, dtype=torch.long)
        for eta in (0.0, 0.1):
            inverted = ddim_invert(predict, latents, timesteps, sched, parts.prediction_type, num_steps=10, eta=eta,
                                   generator=generator)
            eps = implied_noise(inverted, latents, timesteps, sched)
            yield f"toy_sdxl | DDIM, 10 steps, eta {eta} | t {t}", eps.std().item()


@torch.no_grad()
def flow_rows(pixels, captions, generator):
    _, latents, predict = prepared("toy:sd3", pixels, captions, generator)
    n = latents.shape[0]
    velocity = lambda x, s: predict(x, s * 1000)  # noqa: E731
    for sigma in (0.2, 0.5, 0.8):
        sigmas = torch.full((n,), sigma)
        noise = torch.randn(latents.shape, generator=generator)
        forward = (1 - sigma) * latents + sigma * noise
        forward_err = ((velocity(forward, sigmas) - (noise - latents)) ** 2).mean().item()
        for steps in (10, 50):
            inverted = euler_invert(velocity, latents, sigmas, steps)
            eps, target = implied_targets(latents, inverted, sigmas)
            inverted_err = ((velocity(inverted, sigmas) - target) ** 2).mean().item()
            yield (f"toy_sd3 | Euler, {steps} steps | sigma {sigma}", eps.std().item(),
                   f"{inverted_err:.4f} / {forward_err:.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pixels, captions = toy_batch(args.images, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    print("| model | inversion | level | implied noise std (forward process: 1) | reference error inverted / forward |")
    print("|---|---|---|---:|---:|")
    for name, std in unet_rows(pixels, captions, generator):
        print(f"| {name} | {std:.3f} | |")
    for name, std, errors in flow_rows(pixels, captions, generator):
        print(f"| {name} | {std:.3f} | {errors} |")


if __name__ == "__main__":
    main()
