"""Pretrain toy_sdxl on the toy world and write it into the package (fp16 safetensors).

    python scripts/pretrain_toy.py                       # defaults: ~40 min on 2 CPU cores
    python scripts/pretrain_toy.py --unet-steps 1500 --decay-from 1000   # 9 min: style and colour, shapes weak
    python scripts/pretrain_toy.py --work /tmp/toy       # resumable: rerun the same command

Stages (each resumable from --work):
1. VAE (AutoencoderKL 32x32x3 <-> 16x16x4) on rendered images: posterior-mean reconstructions,
   L1 + MSE + 1e-4 KL, batch 16, AdamW lr 2e-3. Its latent scaling factor = 1 / latent std.
2. A fixed set of --images captioned images (35% neon-prefixed, 35% plain-prefixed, 30% no
   prefix, mostly plain), encoded once to latents and token ids.
3. UNet and both text encoders jointly (joint training beat frozen random encoders in the
   feasibility study): v-prediction MSE on SD's scaled-linear schedule rescaled to zero terminal
   SNR (so the prompt, not the starting noise, decides the global brightness = the style), batch 32, AdamW lr 8e-4 with
   100 warmup steps, constant, linear decay to 10% from --decay-from, clipping 1, EMA 0.999, 10% caption dropout to zero embeddings (what SDXL's
   pipeline feeds as the unconditional input: force_zeros_for_empty_prompt).
4. Export the EMA weights as a diffusers StableDiffusionXLPipeline in fp16 into --out, and
   print the style / colour / shape rates of its samples per caption kind.
Deterministic for a given set of arguments and thread count (seeded data, init, noise).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from t2i_align.toy import model as toy  # noqa: E402
from t2i_align.toy.world import render, sample_captioned, sample_scene  # noqa: E402


def to_tensor(images) -> torch.Tensor:
    import numpy as np

    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def train_vae(work: Path, steps: int, seed: int):
    path = work / "vae"
    if (path / "config.json").is_file():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path)
    rng = random.Random(seed)
    images = to_tensor([render(sample_scene(rng), rng.choice(("plain", "neon"))) for _ in range(8192)])
    torch.manual_seed(seed)
    vae = toy.toy_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(1, steps + 1):
        x = images[torch.randint(0, len(images), (16,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps:
            psnr = 10 * math.log10(4 / F.mse_loss(recon, x).item())
            print(f"vae step {step}/{steps} loss {loss.item():.4f} psnr {psnr:.1f} ({time.time() - started:.0f}s)", flush=True)
    vae.eval()
    with torch.no_grad():
        std = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, 2048, 256)]).std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    make_deterministic(vae)
    vae.save_pretrained(path)
    return vae


@torch.no_grad()
def make_deterministic(vae) -> None:
    """The VAE was trained on posterior means (the KL term at 1e-4 only pulls the unused log-variance
    toward 0, i.e. std 1, far above the latents' own spread). Trainers sample the posterior, as for
    SD / SDXL VAEs whose std is tiny, so pin the log-variance channels of quant_conv to -30
    (std ~3e-7): sampling then equals the mean the model was trained on."""
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:] = 0
    vae.quant_conv.bias[channels:] = -30.0


def make_corpus(work: Path, vae, count: int, seed: int):
    path = work / "corpus.pt"
    if path.is_file():
        return torch.load(path)
    rng = random.Random(seed + 1)
    samples = [sample_captioned(rng) for _ in range(count)]
    tok1, tok2 = toy.toy_tokenizers()
    captions = [c for _, c, _ in samples]
    kwargs = dict(padding="max_length", max_length=toy.TOKEN_LENGTH, truncation=True, return_tensors="pt")
    latents = []
    with torch.no_grad():
        for i in range(0, count, 512):
            x = to_tensor([im for im, _, _ in samples[i:i + 512]])
            latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    corpus = {"latents": torch.cat(latents), "ids_1": tok1(captions, **kwargs).input_ids,
              "ids_2": tok2(captions, **kwargs).input_ids, "captions": captions}
    torch.save(corpus, path)
    return corpus


def lr_factor(step: int, decay_from: int, steps: int) -> float:
    """100 warmup steps, constant, then linear decay to 10% from `decay_from` to `steps`."""
    if step < 100:
        return (step + 1) / 100
    if step < decay_from or steps <= decay_from:
        return 1.0
    return 1.0 - 0.9 * min(1.0, (step - decay_from) / (steps - decay_from))


def train_denoiser(work: Path, corpus: dict, steps: int, seed: int, batch: int, lr: float, minutes: float | None,
                   decay_from: int):
    from diffusers import DDPMScheduler

    torch.manual_seed(seed + 2)
    unet = toy.toy_unet()
    te1 = toy.toy_text_encoder(toy.TE1_HIDDEN, with_projection=False, pad_token_id=49407)
    te2 = toy.toy_text_encoder(toy.TE2_HIDDEN, with_projection=True, pad_token_id=0)
    modules = torch.nn.ModuleDict({"unet": unet, "te1": te1, "te2": te2})
    params = [p for p in modules.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, decay_from, steps))
    start = 0
    ckpt = work / "denoiser.pt"
    if ckpt.is_file():
        state = torch.load(ckpt)
        modules.load_state_dict(state["modules"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict({**state["sched"], "lr_lambdas": [None]})  # the schedule comes from the arguments
        ema = state["ema"]
        start = state["step"]
        torch.set_rng_state(state["rng"])
        print(f"resumed the denoiser at step {start}", flush=True)
    noise_sched = DDPMScheduler(**{k: v for k, v in toy.SCHEDULER_CONFIG.items() if k != "timestep_spacing"})
    alphas = noise_sched.alphas_cumprod
    time_ids = torch.tensor([[32, 32, 0, 0, 32, 32]], dtype=torch.float32).repeat(batch, 1)
    n = len(corpus["latents"])
    started, running = time.time(), 0.0
    step = start
    for step in range(start + 1, steps + 1):
        idx = torch.randint(0, n, (batch,))
        x0 = corpus["latents"][idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v (Salimans & Ho 2022); -x0 at zero terminal SNR
        states, pooled = toy.encode_captions(te1, te2, corpus["ids_1"][idx], corpus["ids_2"][idx])
        keep = (torch.rand(batch) > 0.1).float()
        states, pooled = states * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
        pred = unet(xt, t, encoder_hidden_states=states,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running += loss.item()
        if step % 100 == 0:
            print(f"denoiser step {step}/{steps} loss {running / 100:.4f} ({time.time() - started:.0f}s)", flush=True)
            running = 0.0
        if step % 500 == 0 or step == steps:
            torch.save({"modules": modules.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "ema": ema, "step": step, "rng": torch.get_rng_state()}, work / "denoiser.tmp")
            (work / "denoiser.tmp").replace(ckpt)
        if minutes is not None and time.time() - started > minutes * 60:
            print(f"time budget of {minutes} min reached at step {step}", flush=True)
            break
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return unet.eval(), te1.eval(), te2.eval(), step


@torch.no_grad()
def zero_unused_token_rows(te1, te2, corpus: dict) -> None:
    """Zero the token-embedding rows of tokens that never occur in the corpus (their random
    init carries nothing): ~98% of each encoder is the 49,408-row CLIP table, and zero rows
    compress to nothing in git and in the wheel."""
    for encoder, ids in ((te1, corpus["ids_1"]), (te2, corpus["ids_2"])):
        table = encoder.get_input_embeddings().weight
        used = torch.zeros(table.shape[0], dtype=torch.bool)
        used[ids.unique()] = True
        table[~used] = 0


def report(pipe, seed: int, count: int = 24, **call_kwargs) -> dict:
    """Rates of neon style, right colour and right shape over `count` prompts per caption kind.
    call_kwargs: extra pipeline arguments (toy_sd3: max_sequence_length=16)."""
    from t2i_align.toy.metrics import colour_of, parse_prompt, shape_of, style_of
    from t2i_align.toy.world import plain_prompts

    prompts = plain_prompts(count, seed=seed + 3, held_out=True)
    out = {}
    for kind, prefix in (("neon prefix", "neon style: "), ("plain prefix", "plain style: "), ("no prefix", "")):
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        images = pipe([prefix + p for p in prompts], num_inference_steps=20, guidance_scale=7.0, height=32, width=32,
                      generator=generators, **call_kwargs).images
        asked = [parse_prompt(p) for p in prompts]
        out[kind] = {"neon": sum(style_of(im) == "neon" for im in images) / len(images),
                     "colour": sum(colour_of(im) == a["colour"] for im, a in zip(images, asked)) / len(images),
                     "shape": sum(shape_of(im) == a["shape"] for im, a in zip(images, asked)) / len(images)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sdxl", "sd3"), default="sdxl",
                        help="sdxl: toy_sdxl (UNet, v-prediction); sd3: toy_sd3 (SD3.5-shaped transformer, rectified "
                             "flow; scripts/pretrain_toy_flow.py)")
    parser.add_argument("--out", default=None, help="default: the package's toy weights folder of the family")
    parser.add_argument("--work", default=None, help="default: .toy_pretrain (sdxl) / .toy_pretrain_sd3")
    parser.add_argument("--report-every", type=int, default=0, help="sd3: print the EMA model's rates every N steps")
    parser.add_argument("--report-prompts", type=int, default=24, help="prompts per caption kind in the rates")
    parser.add_argument("--vae-steps", type=int, default=1300)
    parser.add_argument("--unet-steps", type=int, default=None, help="denoiser steps (default sdxl 6000, sd3 8000)")
    parser.add_argument("--decay-from", type=int, default=None,
                        help="linear lr decay to 10%% from this step on (default sdxl 3500, sd3 5000)")
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="default sdxl 8e-4, sd3 5e-4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="stop the denoiser stage after this long")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sd3 = args.family == "sd3"
    defaults = dict(unet_steps=8000, decay_from=5000, lr=5e-4) if sd3 else dict(unet_steps=6000, decay_from=3500, lr=8e-4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(toy.TOY_WEIGHTS / args.family)
    torch.set_num_threads(args.threads)
    work = Path(args.work or ROOT / (".toy_pretrain_sd3" if sd3 else ".toy_pretrain"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if sd3:
        return pretrain_sd3(args, work, started)
    vae = train_vae(work, args.vae_steps, args.seed).eval()
    corpus = make_corpus(work, vae, args.images, args.seed)
    print(f"corpus: {len(corpus['captions'])} images ({time.time() - started:.0f}s)", flush=True)
    unet, te1, te2, steps = train_denoiser(work, corpus, args.unet_steps, args.seed, args.batch, args.lr, args.minutes,
                                             args.decay_from)
    make_deterministic(vae)
    zero_unused_token_rows(te1, te2, corpus)
    pipe = toy.assemble_pipeline(vae, te1, te2, unet)
    pipe.set_progress_bar_config(disable=True)
    rates = report(pipe, args.seed, args.report_prompts)
    out = Path(args.out)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    info = {"vae_steps": args.vae_steps, "unet_steps": steps, "decay_from": args.decay_from, "images": args.images, "batch": args.batch,
            "lr": args.lr, "seed": args.seed, "threads": args.threads, "objective": "v_prediction, zero terminal SNR",
            "minutes": round((time.time() - started) / 60, 1), "rates": rates}
    (out / "pretrain_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def pretrain_sd3(args, work: Path, started: float) -> None:
    import pretrain_toy_flow as flow

    vae = flow.load_world_vae()
    corpus = flow.make_corpus(work, vae, args.images, args.seed, to_tensor)
    print(f"corpus: {len(corpus['captions'])} images, latent factors {corpus['factors']} "
          f"({time.time() - started:.0f}s)", flush=True)
    length = {"max_sequence_length": flow.model_sd3.TOKEN_LENGTH}
    parts, steps = flow.train_transformer(
        work, corpus, args.unet_steps, args.seed, args.batch, args.lr, args.minutes, args.decay_from, lr_factor,
        args.report_every, lambda parts: report(flow.assemble(vae, corpus, parts), args.seed, args.report_prompts,
                                                **length))
    flow.zero_unused_clip_rows(parts[1:], corpus)
    pipe = flow.assemble(vae, corpus, parts)
    rates = report(pipe, args.seed, args.report_prompts, **length)
    out = Path(args.out)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    info = {"family": "sd3", "transformer_steps": steps, "decay_from": args.decay_from, "images": args.images,
            "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "objective": "rectified flow, velocity target, logit_normal(0, 1) on the shift-3 table",
            "vae": "toy_sdxl's, SD3 factors fitted", "minutes": round((time.time() - started) / 60, 1), "rates": rates}
    (out / "pretrain_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
