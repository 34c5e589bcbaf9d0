"""The flow-matching stages of scripts/pretrain_toy.py (--family sd3): toy_sd3 on the toy world.

1. VAE: toy_sdxl's (shipped in the package; the same world), with SD3's latent normalisation
   (x - shift_factor) * scaling_factor fitted to the raw latents of the corpus.
2. The same captioned corpus as toy_sdxl (sample_captioned, --images images, seed + 1).
3. Transformer and the three text encoders jointly, as diffusers trains SD3
   (train_dreambooth_sd3.py): x_t = (1 - sigma) x_0 + sigma noise, velocity target noise - x_0,
   sigma from the scheduler's shifted table (shift 3) at u ~ logit_normal(0, 1), timestep sigma x
   1000, unweighted MSE; batch 32, AdamW with 100 warmup steps, linear decay to 10% from
   --decay-from, clipping 1, EMA 0.999; 10% caption dropout to the empty caption (what
   StableDiffusion3Pipeline encodes as its unconditional input, negative_prompt "").
4. Export the EMA weights as a StableDiffusion3Pipeline in fp16 and report style / colour /
   shape rates per caption kind (20 Euler steps, guidance 7, SD3's default).
Resumable from --work (checkpoints every 500 steps); deterministic for given arguments and threads.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i_align.models.prompt_encoding_sd3 import encode_sd3_prompts
from t2i_align.noising.flow import flow_noise_pairs, sample_u, sigmas_from_table
from t2i_align.toy import model as toy
from t2i_align.toy import model_sd3
from t2i_align.toy.world import sample_captioned


def load_world_vae():
    """toy_sdxl's VAE in float32 (the log-variance is pinned: sampling = the mean)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(toy.TOY_WEIGHTS / "sdxl" / "vae").float().eval()


def make_corpus(work: Path, vae, count: int, seed: int, to_tensor):
    """{"latents": normalised latents [N, 4, 16, 16], "captions", "factors": (scale, shift)}."""
    path = work / "corpus_sd3.pt"
    if path.is_file():
        return torch.load(path)
    rng = random.Random(seed + 1)
    samples = [sample_captioned(rng) for _ in range(count)]
    raw = []
    with torch.no_grad():
        for i in range(0, count, 512):
            raw.append(vae.encode(to_tensor([im for im, _, _ in samples[i:i + 512]])).latent_dist.mean)
    raw = torch.cat(raw)
    scale, shift = model_sd3.fit_latent_factors(vae, raw)
    corpus = {"latents": (raw - shift) * scale, "captions": [c for _, c, _ in samples], "factors": (scale, shift)}
    torch.save(corpus, path)
    return corpus


def train_transformer(work: Path, corpus: dict, steps: int, seed: int, batch: int, lr: float, minutes, decay_from: int,
                      lr_factor, report_every: int, report_fn):
    torch.manual_seed(seed + 2)
    transformer = model_sd3.toy_sd3_transformer()
    encoders = model_sd3.toy_sd3_text_encoders()
    tokenizers = model_sd3.toy_sd3_tokenizers()
    modules = torch.nn.ModuleDict({"transformer": transformer, "te1": encoders[0], "te2": encoders[1],
                                   "te3": encoders[2]})
    params = list(modules.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, decay_from, steps))
    noise_scheduler = model_sd3.scheduler()
    gen = torch.Generator().manual_seed(seed + 3)
    start, ckpt = 0, work / "transformer.pt"
    if ckpt.is_file():
        state = torch.load(ckpt)
        modules.load_state_dict(state["modules"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict({**state["sched"], "lr_lambdas": [None]})
        ema, start = state["ema"], state["step"]
        torch.set_rng_state(state["rng"])
        gen.set_state(state["gen"])
        print(f"resumed the transformer at step {start}", flush=True)
    captions, n = corpus["captions"], len(corpus["latents"])
    started, running, step = time.time(), 0.0, start
    for step in range(start + 1, steps + 1):
        idx = torch.randint(0, n, (batch,))
        x0 = corpus["latents"][idx]
        keep = torch.rand(batch) > 0.1
        batch_captions = [captions[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist())]
        cond = encode_sd3_prompts(batch_captions, encoders, tokenizers, max_sequence_length=model_sd3.TOKEN_LENGTH)
        u = sample_u(batch, gen, x0.device, "logit_normal", 0.0, 1.0)
        sigmas, _ = sigmas_from_table(u, noise_scheduler.sigmas, noise_scheduler.timesteps)
        noisy, target, rows = flow_noise_pairs(x0, None, sigmas, gen)
        pred = transformer(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                           pooled_projections=cond["pooled_projections"], timestep=rows * 1000).sample
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
            print(f"transformer step {step}/{steps} loss {running / 100:.4f} ({time.time() - started:.0f}s)", flush=True)
            running = 0.0
        if step % 500 == 0 or step == steps:
            torch.save({"modules": modules.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "ema": ema, "step": step, "rng": torch.get_rng_state(), "gen": gen.get_state()},
                       work / "transformer.tmp")
            (work / "transformer.tmp").replace(ckpt)
        if report_every and step % report_every == 0 and step < steps:
            print(f"step {step} (EMA): {report_fn(_ema_copy(modules, params, ema))}", flush=True)
        if minutes is not None and time.time() - started > minutes * 60:
            print(f"time budget of {minutes} min reached at step {step}", flush=True)
            break
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return [m.eval() for m in (transformer, *encoders)], step


def _ema_copy(modules, params, ema):
    import copy

    clone = copy.deepcopy(modules)
    with torch.no_grad():
        for p, e in zip(clone.parameters(), ema):
            p.copy_(e)
    return [clone[k].eval() for k in ("transformer", "te1", "te2", "te3")]


@torch.no_grad()
def zero_unused_clip_rows(encoders, corpus: dict) -> None:
    """Zero the CLIP token-table rows no caption uses (random init carries nothing; they compress away)."""
    tokenizers = model_sd3.toy_sd3_tokenizers()
    for encoder, tokenizer in zip(encoders[:2], tokenizers[:2]):
        ids = tokenizer(corpus["captions"] + [""], padding="max_length", max_length=model_sd3.TOKEN_LENGTH,
                        truncation=True, return_tensors="pt").input_ids
        table = encoder.get_input_embeddings().weight
        used = torch.zeros(table.shape[0], dtype=torch.bool)
        used[ids.unique()] = True
        table[~used] = 0


def assemble(vae, corpus: dict, parts):
    """The StableDiffusion3Pipeline with the VAE's fitted SD3 factors."""
    import copy

    vae = copy.deepcopy(vae)
    scale, shift = corpus["factors"]
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    transformer, *encoders = parts
    pipe = model_sd3.assemble_sd3_pipeline(vae, encoders, transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
