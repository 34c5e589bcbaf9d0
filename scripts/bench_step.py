"""Step benchmark: what one training step of t2i_align costs next to the bare denoiser compute.

For every (model, method, tuning) row this measures two things on the same denoiser and batch:

- "step": one optimizer step exactly as the training recipe (t2i_align/training/recipe.py)
  runs it with grad_accum 1: ``preference_step`` (VAE encode + text encode + noising + policy
  forward + reference forward + objective), the finite-loss check, ``accelerator.backward``,
  ``accelerator.clip_grad_norm_``, ``optimizer.step``, ``lr_scheduler.step``, ``zero_grad`` and
  the per-step metric reduction. The optimizer is AdamW over the trainable parameters, built
  with the trainer defaults of conf/trainer/default.yaml (LoRA: trainer.lora.target_modules, or,
  when null as by default, the family's LORA_TARGETS, as the recipe); the objective, its caption
  mode (shared prompt; per-image captions for dcpo, also accepted by --methods) and its
  hyper-parameters come from conf/method/<method>.yaml. The batch is built once through the
  real data path (generated_pairs_table -> PreferencePairs -> collate_pairs) and reused.
- "bare": the same compute with nothing but the denoiser: precomputed noisy latents, timesteps
  and conditioning ([2B] for DPO / MaPO, [B] for SFT), policy forward + MSE + backward +
  AdamW step + zero_grad, plus, for DPO, one reference forward under no_grad of the same kind
  (the frozen copy for full fine-tuning, the same denoiser with its LoRA adapters off for LoRA).
  Every denoiser call is the family's ``predict`` (t2i_align/families/: the bare model call with
  the family's arguments), so UNet and SD3 transformer rows measure the same thing.

Models (--models): UNet rows (sdxl family, DDPM noising): "tiny" (the tiny
SDXL parts, 32 px), "small" (a ~33M-parameter SDXL-shaped UNet in the tiny SDXL parts, 64 px),
"toy" (the shipped pretrained toy_sdxl, 32 px). Flow-matching rows (sd3 family,
SD3Transformer2DModel, rectified flow with velocity targets and the default model.flow sigma
sampling): "tiny_sd3" (the tiny SD3.5-shaped parts, 32 px), "flow" (a ~19M-parameter SD3.5-shaped
transformer, 8 joint blocks of 8 heads x 32 with a dual-attention first block, in the tiny SD3
parts: 64 px -> 32x32x16 latents -> 256 image tokens next to 77 CLIP + 256 T5 tokens), "toy_sd3"
(the pretrained toy_sd3, when its weights exist: a clear error otherwise). The default is
tiny,small,toy,tiny_sd3; "flow" costs about what "small" does, so it is selected explicitly
(--models flow).

The bare compute is what any implementation of the method must spend; step - bare is the
overhead this framework owns (and the frozen VAE / text encoders, which the papers' scripts
also run every step). ratio = step / bare; the target is within 1.05x. "encode" times the
part of preference_step before the denoiser (VAE + text encoders + noising) on its own, and the
phase table splits both loops (forward / backward / clip / optimizer) so the ratio is explained.

Timing: time.perf_counter around each step (with torch.cuda.synchronize at every phase mark on
CUDA). The step, bare and encode loops run round-robin, rotating their order every round, so
load from other processes on a shared machine hits all three alike; after --warmup untimed
steps of each, the median over --steps timed steps is reported (the min-based ratio too: on a
busy machine the min is the least disturbed estimate). A "CPU stall %" column (Linux PSI) says
how much CPU contention each row saw. The environment is the one a training run has: the recipe
sets TOKENIZERS_PARALLELISM=false (unless set), since the HF tokenizers' own threads otherwise
compete with torch's (on 2 cores: tiny SFT 0.097 -> 0.062 s/step).

Peak memory, measured in separate untimed passes (bare loop first, then step loop, two steps
each, which reach the peak: AdamW state appears in the first optimizer step, the second
backward holds activations + grads + that state). On CUDA: torch.cuda.max_memory_allocated,
reset per pass, minus the allocation after loading the model parts. On CPU there is no
allocator counter, so each row runs in a fresh subprocess (the script re-invokes itself with
--row) and reports the peak resident set size (VmHWM, reset through /proc/self/clear_refs before
each pass) minus the RSS after loading the model parts: what training adds on top of the loaded
weights (reference copy, LoRA weights, gradients, AdamW state, activations). The bare pass goes
first so that the step's peak is not hidden by memory the bare pass freed but malloc kept.

Data source ("data" column): "images" runs the VAE on both images and the text encoders every step,
as the papers' scripts do; "cache" reads the latent cache (t2i_align/data/latent_cache.py, built
here for the same pairs) and has no VAE or text encoder loaded, as a data.cache.enabled=true run.
Reference ("reference" column, --references): copy, cpu_offload (on CPU the same memory as copy:
there is no device memory to save), adapters_off for LoRA. A last table gives the latent cache
build throughput (--cache-pairs).

Usage: python scripts/bench_step.py [--models tiny,small,toy,tiny_sd3,flow,toy_sd3] [--methods sft,mapo,dpo]
       [--tunings full,lora] [--sources images,cache] [--references auto,copy,cpu_offload]
       [--pairs 2] [--steps 5] [--warmup 2] [--device cpu|cuda] [--cache-pairs 32]
       [--options compile,channels_last] [--json PATH] [--no-subprocess]
E.g. the issue-7 table: --models small --methods sft,mapo,dpo --tunings full --references copy,cpu_offload;
the SD3-shaped rows: --models flow --methods sft,mapo,dpo --tunings full,lora --sources images,cache.
Use --steps 10 or more for tighter medians on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as t2i_align.training.recipe sets it

REPO = Path(__file__).resolve().parents[1]
# UNet rows (SDXL family) and flow-matching rows (SD3 family, SD3Transformer2DModel). Not default:
# "flow" (its 20 rows cost about what the small UNet's do, so the default run would roughly double;
# select it with --models flow) and "toy_sd3" (needs the pretrained weights of
# scripts/pretrain_toy.py --family sd3).
UNET_MODELS = ("tiny", "small", "toy")
FLOW_MODELS = ("tiny_sd3", "flow", "toy_sd3")
MODELS = UNET_MODELS + FLOW_MODELS
DEFAULT_MODELS = ("tiny", "small", "toy", "tiny_sd3")
METHODS = ("sft", "mapo", "dpo", "dcpo", "inpo")  # the default rows
TUNINGS = ("full", "lora")
SOURCES = ("images", "cache")  # the step reads images (VAE + text encoders every step) or the latent cache
REFERENCES = ("auto", "copy", "cpu_offload")  # full fine-tuning reference strategies (LoRA: adapters_off)
SEED = 0
ROW_TAG = "BENCH_ROW "  # prefix of the JSON line a --row child prints on stdout
MEMORY_STEPS = 2  # untimed steps per loop for the peak-memory passes

# The "small" UNet: SDXL-shaped (no attention at the top level, deeper transformers lower down,
# linear projections, text_time conditioning), about 33M parameters, for 64 px images.
SMALL_RESOLUTION = 64
SMALL_UNET = dict(
    sample_size=SMALL_RESOLUTION // 2,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(2, 4, 8),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
)

# The "flow" transformer: SD3.5-shaped (joint attention over image and text tokens, a
# dual-attention first block, RMS qk-norm), about 20M parameters; at 64 px the tiny SD3 VAE gives
# 32x32x16 latents, i.e. 16x16 = 256 image tokens of patch 2. Text widths are tiny_sd3's: T5 96
# (joint_attention_dim), pooled CLIP 32 + 48 = 80.
FLOW_TRANSFORMER = dict(
    sample_size=SMALL_RESOLUTION // 2,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=8,
    attention_head_dim=32,
    num_attention_heads=8,
    caption_projection_dim=256,  # = heads x head_dim, as in SD3
    pos_embed_max_size=32,  # in patches per side: room for up to 128 px here
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)


# ----------------------------------------------------------------------------------- config

def trainer_defaults():
    """conf/trainer/default.yaml: the optimizer, clipping, schedule and LoRA settings of a run."""
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "conf" / "trainer" / "default.yaml")


def method_config(method: str):
    """conf/method/<method>.yaml: objective, captions (shared / per_image), noising, loss."""
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "conf" / "method" / f"{method}.yaml")


def method_hparams(meth, noise_scheduler) -> dict:
    """The objective's hyper-parameters of a method config, resolved as the recipe does."""
    from omegaconf import OmegaConf

    hparams = dict(OmegaConf.to_container(meth.loss, resolve=True))
    if "num_train_timesteps" in hparams and hparams["num_train_timesteps"] is None:
        hparams["num_train_timesteps"] = noise_scheduler.config.num_train_timesteps
    return hparams


# ----------------------------------------------------------------------------------- models

def small_unet(text_encoders):
    """The ~33M-parameter SDXL-shaped UNet, conditioned like the tiny SDXL text encoders."""
    import torch
    from diffusers import UNet2DConditionModel

    cross_dim = sum(encoder.config.hidden_size for encoder in text_encoders)
    pooled_dim = text_encoders[1].config.projection_dim
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        **SMALL_UNET,
        cross_attention_dim=cross_dim,
        projection_class_embeddings_input_dim=6 * SMALL_UNET["addition_time_embed_dim"] + pooled_dim,
    )
    unet.requires_grad_(True)
    unet.train()
    return unet


def flow_transformer(text_encoders):
    """The ~20M-parameter SD3.5-shaped transformer, conditioned like the tiny SD3 text encoders
    (joint_attention_dim = the T5 width, pooled_projection_dim = the two CLIP projections)."""
    import torch
    from diffusers import SD3Transformer2DModel

    clip_1, clip_2, t5 = text_encoders
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        **FLOW_TRANSFORMER,
        joint_attention_dim=t5.config.d_model,
        pooled_projection_dim=clip_1.config.projection_dim + clip_2.config.projection_dim,
    )
    transformer.requires_grad_(True)
    transformer.train()
    return transformer


def load_model(name: str, device):
    """(parts, resolution) of a benchmark model, every part on `device` (the recipe moves the
    denoiser there before making the reference):

    - "tiny" / "toy": the tiny SDXL parts / the shipped pretrained toy_sdxl; "small": the tiny SDXL
      parts with the small UNet swapped in (64 px);
    - "tiny_sd3" / "toy_sd3": the tiny SD3.5-shaped parts / the pretrained toy_sd3 (load_parts
      raises a clear error when its weights are missing); "flow": the tiny SD3 parts with the
      flow transformer swapped in (64 px)."""
    from t2i_align.models.loading import load_parts
    from t2i_align.models.tiny import TINY_RESOLUTION

    sources = {"tiny": "tiny:sdxl", "small": "tiny:sdxl", "toy": "toy:sdxl",
               "tiny_sd3": "tiny:sd3", "flow": "tiny:sd3", "toy_sd3": "toy:sd3"}
    if name not in sources:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    parts = load_parts(sources[name])
    resolution = TINY_RESOLUTION  # 32 px: the tiny and toy models, both families
    if name == "small":
        parts.unet = small_unet(parts.text_encoders)
        resolution = SMALL_RESOLUTION
    elif name == "flow":
        parts.unet = flow_transformer(parts.text_encoders)
        resolution = SMALL_RESOLUTION
    parts.unet.to(device)
    parts.vae.to(device)
    for encoder in parts.text_encoders:
        encoder.to(device)
    return parts, resolution


def build_batch(num_pairs: int, resolution: int) -> dict:
    """One micro-batch through the real data path (generated pairs, centre crop, pair flip)."""
    from t2i_align.data.dataset import PreferencePairs, collate_pairs
    from t2i_align.data.generated import generated_pairs_table

    table = generated_pairs_table(num_pairs=num_pairs, seed=SEED, size=max(64, resolution))
    dataset = PreferencePairs(table, resolution=resolution, random_crop=False, random_flip=True, seed=SEED)
    return collate_pairs([dataset[i] for i in range(num_pairs)])


def build_cached_batch(parts, num_pairs: int, resolution: int, folder: Path, per_image_captions: bool) -> dict:
    """The same pairs through the latent cache: built with the real builder (centre crop, flip
    variants), read back through CachedPairs + collate_cached as a cached training run does."""
    from t2i_align.data.generated import generated_pairs_table
    from t2i_align.data.latent_cache import CachedPairs, build_latent_cache, collate_cached

    table = generated_pairs_table(num_pairs=num_pairs, seed=SEED, size=max(64, resolution))
    build_latent_cache(table, folder, {"bench": num_pairs, "resolution": resolution}, vae=parts.vae,
                       text_encoders=parts.text_encoders, tokenizers=parts.tokenizers, family=parts.family,
                       resolution=resolution, flip_variants=True, per_image_captions=per_image_captions,
                       storage_dtype="float32")
    dataset = CachedPairs(folder, random_flip=True, seed=SEED)
    return collate_cached([dataset[i] for i in range(num_pairs)], dataset.empty_captions,
                          dataset.info["scaling_factor"], dataset.info["shift_factor"])


def cache_build_throughput(model: str, pairs: int, device_name: str, folder: Path) -> dict:
    """Pairs per second of building the latent cache (decode, crop, VAE on both images and the flip
    variants, caption embeddings, shard write) and bytes stored per pair."""
    import torch

    from t2i_align.data.generated import generated_pairs_table
    from t2i_align.data.latent_cache import build_latent_cache

    device = torch.device(device_name)
    parts, resolution = load_model(model, device)
    table = generated_pairs_table(num_pairs=pairs, seed=SEED, size=max(64, resolution))
    started = time.perf_counter()
    build_latent_cache(table, folder, {"bench": pairs}, vae=parts.vae, text_encoders=parts.text_encoders,
                       tokenizers=parts.tokenizers, family=parts.family, resolution=resolution, flip_variants=True,
                       per_image_captions=False, storage_dtype="float16")
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    return {"model": model, "pairs": len(table), "seconds": seconds, "pairs_per_s": len(table) / seconds,
            "bytes_per_pair": size / len(table), "resolution": resolution}


@dataclass
class Training:
    """What the recipe sets up before its loop: objective, denoiser (+LoRA), reference, and the
    model family whose ``predict`` calls the denoiser (UNet or SD3 transformer)."""

    objective: object
    hparams: dict
    per_image_captions: bool  # method.captions == "per_image" (DCPO)
    unet: object  # the denoiser: UNet2DConditionModel or SD3Transformer2DModel
    reference: object  # callable or None
    reference_kind: str  # "none" | "copy" | "cpu_offload" | "adapters_off"
    trainable: list
    noising: dict  # preference_step's noising keywords (forward, or InPO's inversion settings)
    family: object  # the family module (t2i_align/families/)


def setup_training(parts, method: str, tuning: str, tcfg, device, reference: str = "auto",
                   options: tuple = ()) -> Training:
    """Attention backend, LoRA, reference: the same calls in the same order as run_training."""
    import torch

    from t2i_align.families import get_family
    from t2i_align.models.attention import set_attention_backend
    from t2i_align.models.lora import add_lora
    from t2i_align.models.reference import make_reference
    from t2i_align.objectives import get_objective
    from t2i_align.training.recipe import resolve_reference_strategy

    meth = method_config(method)
    noising = {"noising": meth.get("noising", "forward")}
    if noising["noising"] == "inversion":
        noising.update(inversion_steps=meth.inversion.steps, inversion_eta=meth.inversion.eta,
                       inversion_model=meth.inversion.model,
                       inversion_evaluate_at=meth.inversion.get("evaluate_at", "destination"))
    objective = get_objective(meth.objective)
    use_lora = tuning == "lora"
    unet = parts.unet
    set_attention_backend(unet, "sdpa")
    if use_lora:
        torch.manual_seed(SEED)  # LoRA A matrices are drawn from the global RNG
        # trainer.lora.target_modules, or (null, the default) the family's LORA_TARGETS, as the recipe
        targets = tcfg.lora.get("target_modules") or get_family(parts.family).LORA_TARGETS
        add_lora(unet, rank=tcfg.lora.rank, alpha=tcfg.lora.alpha, dropout=tcfg.lora.dropout,
                 target_modules=tuple(targets))
    if "channels_last" in options:  # trainer.channels_last, as the recipe applies it
        unet.to(memory_format=torch.channels_last)
    kind = resolve_reference_strategy("auto" if use_lora else reference, use_lora, objective.needs_reference)
    reference = make_reference(unet, kind, dtype=None, device=device)  # fp32 run: no reference cast
    unet.to(device)
    if "compile" in options:  # trainer.compile: in place, after the reference copy
        unet.compile()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    return Training(objective, method_hparams(meth, parts.noise_scheduler), meth.get("captions") == "per_image",
                    unet, reference, kind, trainable, noising, get_family(parts.family))


# ----------------------------------------------------------------------------------- timing

class PhaseClock:
    """perf_counter marks within one step; synchronizes CUDA at every mark."""

    def __init__(self, device):
        import torch

        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.phases: dict[str, float] = {}

    def start(self) -> None:
        self._sync()
        self.phases = {}
        self._start = self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return self._last - self._start


def run_untimed(run, iterations: int, device) -> None:
    """Run `run(clock)` a few times without recording (warm-up, memory passes)."""
    clock = PhaseClock(device)
    for _ in range(iterations):
        clock.start()
        run(clock)


def time_interleaved(loops: dict, warmup: int, steps: int, device) -> dict:
    """Time several loops round-robin (rotating the order every round), so that load from other
    processes on a shared machine hits all of them alike. Per loop: median and min of the
    timed steps, all step times, and the median of each phase."""
    names = list(loops)
    for name in names:
        run_untimed(loops[name], warmup, device)
    clock = PhaseClock(device)
    totals = {name: [] for name in names}
    phases = {name: defaultdict(list) for name in names}
    for index in range(steps):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            clock.start()
            loops[name](clock)
            totals[name].append(clock.total())
            for phase, seconds in clock.phases.items():
                phases[name][phase].append(seconds)
    return {name: {"median": statistics.median(totals[name]), "min": min(totals[name]), "times": totals[name],
                   "phases": {phase: statistics.median(v) for phase, v in phases[name].items()}}
            for name in names}


# ----------------------------------------------------------------------------------- memory

class MemoryMeter:
    """Current and peak memory in MB: CUDA allocator counters, or the process RSS on CPU."""

    def __init__(self, device):
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "rss"

    @staticmethod
    def _status_mb(key: str) -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def current(self) -> float:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status_mb("VmRSS")

    def reset_peak(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) to the current RSS
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            self.kind = "ru_maxrss"  # lifetime peak only: the load itself may dominate

    def peak(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "rss":
            return self._status_mb("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_stall_seconds() -> float | None:
    """Total time (s) some task of this machine waited for a CPU (/proc/pressure/cpu, Linux PSI)."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
        return int(some[-1].split("=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


# ----------------------------------------------------------------------------------- loops

def encode_inputs(parts, batch: dict, training: Training, resolution: int, device, generator) -> dict:
    """Everything preference_step does before the denoiser, with the same calls (keep in step with
    t2i_align/training/step.py): one VAE call for the pair batch, the text conditioning (shared
    prompt, or per-image captions for DCPO), forward noising or (InPO) the family's inversion."""
    import torch

    from t2i_align.families import get_family
    from t2i_align.training.step import build_conditioning

    family = get_family(parts.family)
    uses_rejected = training.objective.uses_rejected
    if "latent_mean_w" in batch:  # the latent cache: a posterior sample and cached embeddings only
        from t2i_align.training.step import cached_conditioning

        mean, std = batch["latent_mean_w"], batch["latent_std_w"]
        if uses_rejected:
            mean, std = torch.cat([mean, batch["latent_mean_l"]]), torch.cat([std, batch["latent_std_l"]])
        latents = family.posterior_latents(mean.to(device), std.to(device), generator, batch["scaling_factor"],
                                    batch["shift_factor"])
        latents_w, latents_l = latents.chunk(2) if uses_rejected else (latents, None)
        cond = cached_conditioning(batch, None, uses_rejected, training.per_image_captions, parts.family,
                                   resolution, device)
        return _noise(parts, training, cond, latents_w, latents_l, generator)
    if uses_rejected:
        pixels = torch.cat([batch["pixels_w"], batch["pixels_l"]])
        latents_w, latents_l = family.encode_latents(parts.vae, pixels, generator).chunk(2)
    else:
        latents_w, latents_l = family.encode_latents(parts.vae, batch["pixels_w"], generator), None
    if training.per_image_captions:
        captions_w, captions_l = list(batch["captions_w"]), list(batch["captions_l"])
    else:
        captions_w = captions_l = list(batch["captions"])
    cond = build_conditioning(captions_w, captions_l if uses_rejected else None, parts.text_encoders,
                              parts.tokenizers, parts.family, batch["original_sizes_w"],
                              batch["original_sizes_l"], batch["crop_top_left"], resolution, device)
    return _noise(parts, training, cond, latents_w, latents_l, generator)


def _noise(parts, training: Training, cond: dict, latents_w, latents_l, generator) -> dict:
    """(x_t, target, t) by the family's forward_pairs (DDPM for the UNets, rectified flow with the
    default model.flow settings for SD3, as RecipeStep's preference_step call) or InPO's inversion,
    with the conditioning merged in: the inputs BareStep reads."""
    from t2i_align.families import get_family

    if training.noising["noising"] == "inversion":
        noisy, target, timesteps = invert_pairs(parts, training, cond, latents_w, latents_l, generator)
    else:
        noisy, target, timesteps = get_family(parts.family).forward_pairs(
            parts.noise_scheduler, latents_w, latents_l, generator, parts.prediction_type)
    return {"noisy": noisy, "target": target, "timesteps": timesteps, "latents_w": latents_w,
            "latents_l": latents_l, **cond}


def invert_pairs(parts, training: Training, cond: dict, latents_w, latents_l, generator):
    """InPO's noising as preference_step does it: the family's inversion (DDIM for the UNets, Euler
    ODE inversion for SD3) by the reference (or policy)
    under no grad, conditioned like the loss pass. Its denoiser forwards are compute any InPO
    implementation spends, so the bare loop runs them too."""
    import torch

    from t2i_align.families import get_family

    family = get_family(parts.family)
    settings = training.noising
    inverter = training.reference if settings["inversion_model"] == "reference" else training.unet

    @torch.no_grad()
    def predict(x, t):
        return family.predict(inverter, x, t, cond)

    return family.inversion_pairs(parts.noise_scheduler, latents_w, latents_l, predict, generator,
                                  parts.prediction_type, num_steps=settings["inversion_steps"],
                                  eta=settings["inversion_eta"],
                                  evaluate_at=settings.get("inversion_evaluate_at", "destination"))


class BareStep:
    """Denoiser-only step on precomputed inputs: policy fwd + MSE (+ reference fwd) + bwd + AdamW.

    Every denoiser call is the family's ``predict`` (only the model call with the family's
    keyword arguments: UNet positional + added_cond_kwargs, SD3 hidden_states / pooled_projections
    / timestep) on the precomputed conditioning, which ``inputs`` holds under the family's keys."""

    def __init__(self, training: Training, inputs: dict, tcfg):
        import torch

        self.training, self.inputs = training, inputs
        self.optimizer = torch.optim.AdamW(training.trainable, lr=tcfg.lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                           eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)

    def _predict(self, model):
        x = self.inputs
        return self.training.family.predict(model, x["noisy"], x["timesteps"], x)

    def _inversion_forwards(self) -> None:
        """InPO: the K no-grad denoiser forwards of the inversion (DDIM / Euler), on [2B] latents."""
        import torch

        with torch.no_grad():
            for _ in range(self.training.noising["inversion_steps"]):
                self._predict(self.training.unet)

    def _reference_forward(self) -> None:
        """The reference's no-grad forward: the frozen copy's module (offload hooks included for
        cpu_offload), or the policy with its adapters disabled."""
        import torch

        kind = self.training.reference_kind
        if kind == "none":
            return
        unet = self.training.unet if kind == "adapters_off" else self.training.reference.unet
        with torch.no_grad():
            if kind == "adapters_off":
                unet.disable_adapters()
            self._predict(unet)
            if kind == "adapters_off":
                unet.enable_adapters()

    def __call__(self, clock: PhaseClock) -> None:
        import torch.nn.functional as F

        x = self.inputs
        if self.training.noising["noising"] == "inversion":
            self._inversion_forwards()
            clock.mark("inversion")
        pred = self._predict(self.training.unet)
        loss = F.mse_loss(pred.float(), x["target"].float())
        self._reference_forward()
        clock.mark("forward")
        loss.backward()
        clock.mark("backward")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.mark("optimizer")

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None


class RecipeStep:
    """One optimizer step as run_training's loop body does it (grad_accum 1, fp32, no logging I/O)."""

    def __init__(self, parts, training: Training, batch: dict, tcfg, resolution: int, device):
        import torch
        from accelerate import Accelerator

        from t2i_align.training.optim import build_lr_scheduler, build_optimizer

        self.parts, self.training, self.batch = parts, training, batch
        self.resolution, self.device = resolution, device
        self.max_norm = tcfg.max_grad_norm if tcfg.max_grad_norm else float("inf")
        from accelerate.state import AcceleratorState

        # The accelerate state is a process-wide singleton: an earlier run in this process with
        # another mixed precision (a bf16 recipe, a test) would make Accelerator() refuse. Reset
        # it as the recipe does, keeping the distributed PartialState.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(mixed_precision="no", cpu=device.type == "cpu",
                                       step_scheduler_with_optimizer=False)
        optimizer = build_optimizer(training.trainable, tcfg.optimizer, lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                    betas=(tcfg.adam_beta1, tcfg.adam_beta2), eps=tcfg.adam_eps)
        self.lr_scheduler = build_lr_scheduler(optimizer, tcfg.lr_scheduler, tcfg.warmup_steps, 10**6)
        self.unet, self.optimizer = self.accelerator.prepare(training.unet, optimizer)
        self.generator = torch.Generator(device=device).manual_seed(SEED)

    def __call__(self, clock: PhaseClock) -> None:
        import torch

        from t2i_align.training.metrics_log import mean_metrics, to_float
        from t2i_align.training.step import preference_step

        parts, training = self.parts, self.training
        loss, metrics = preference_step(
            self.batch, unet=self.unet, reference=training.reference, vae=parts.vae,
            text_encoders=parts.text_encoders, tokenizers=parts.tokenizers, family=parts.family,
            noise_scheduler=parts.noise_scheduler, prediction_type=parts.prediction_type,
            objective=training.objective, objective_hparams=training.hparams, generator=self.generator,
            caption_dropout=0.0, resolution=self.resolution, device=self.device,
            autocast=self.accelerator.autocast, per_image_captions=training.per_image_captions,
            **training.noising)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} in the benchmark step")
        clock.mark("forward")
        self.accelerator.backward(loss)
        clock.mark("backward")
        grad_norm = self.accelerator.clip_grad_norm_(training.trainable, self.max_norm)
        clock.mark("clip")
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_metrics([{"loss": loss.detach(), **metrics}])
        to_float(grad_norm)
        clock.mark("optimizer")

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.free_memory()
        self.optimizer = self.unet = None


# ----------------------------------------------------------------------------------- one row

def run_row(model: str, method: str, tuning: str, pairs: int, steps: int, warmup: int, device_name: str,
            source: str = "images", reference: str = "auto", options: tuple = ()) -> dict:
    """Measure one (model, method, tuning, data source, reference strategy): bare loop, then recipe
    step loop, then encode alone. source "cache": the batch comes from a latent cache built here,
    and the VAE and text encoders are dropped before measuring (a cached run never loads them)."""
    import tempfile

    import torch

    device = torch.device(device_name)
    torch.manual_seed(SEED)
    memory = MemoryMeter(device)
    tcfg = trainer_defaults()
    parts, resolution = load_model(model, device)
    unet_params = sum(p.numel() for p in parts.unet.parameters())
    if source == "cache":
        per_image = method_config(method).get("captions") == "per_image"
        with tempfile.TemporaryDirectory() as folder:
            batch = build_cached_batch(parts, pairs, resolution, Path(folder) / "cache", per_image)
        parts.vae, parts.text_encoders = None, []
    else:
        batch = build_batch(pairs, resolution)
    baseline = memory.current()

    training = setup_training(parts, method, tuning, tcfg, device, reference, options)
    generator = torch.Generator(device=device).manual_seed(SEED)
    with torch.no_grad():
        inputs = encode_inputs(parts, batch, training, resolution, device, generator)

    # Memory passes, one loop at a time: two steps reach the peak (AdamW state is created in
    # the first optimizer step; the second backward holds activations + grads + that state).
    memory.reset_peak()
    bare = BareStep(training, inputs, tcfg)
    run_untimed(bare, MEMORY_STEPS, device)
    bare_peak = memory.peak() - baseline
    bare.close()
    memory.reset_peak()
    step = RecipeStep(parts, training, batch, tcfg, resolution, device)
    run_untimed(step, MEMORY_STEPS, device)
    step_peak = memory.peak() - baseline

    def encode(clock):
        with torch.no_grad():
            encode_inputs(parts, batch, training, resolution, device, generator)
        clock.mark("encode")

    loops = {"step": step, "bare": None, "encode": encode}
    if training.noising["noising"] == "inversion":
        def inversion(clock):
            invert_pairs(parts, training, inputs, inputs["latents_w"], inputs["latents_l"], generator)
            clock.mark("inversion")
        loops["inversion"] = inversion

    bare = BareStep(training, inputs, tcfg)
    loops["bare"] = bare
    stall_before, started = cpu_stall_seconds(), time.perf_counter()
    timing = time_interleaved(loops, warmup, steps, device)
    stall_after, wall = cpu_stall_seconds(), time.perf_counter() - started
    cpu_stall = None if stall_before is None else 100 * (stall_after - stall_before) / wall
    step.close()
    bare.close()
    step_t, bare_t, encode_t = timing["step"], timing["bare"], timing["encode"]
    return {
        "model": model, "method": method, "tuning": tuning, "reference": training.reference_kind, "source": source,
        "options": "+".join(options) or "-",
        "pairs": pairs, "resolution": resolution, "latent": list(inputs["noisy"].shape[-2:]),
        "family": parts.family, "denoiser": type(parts.unet).__name__, "unet_params_m": unet_params / 1e6,
        "trainable_params_m": sum(p.numel() for p in training.trainable) / 1e6,
        "step_s": step_t["median"], "bare_s": bare_t["median"], "ratio": step_t["median"] / bare_t["median"],
        "encode_s": encode_t["median"], "step_min_s": step_t["min"], "bare_min_s": bare_t["min"],
        "inversion_s": timing["inversion"]["median"] if "inversion" in timing else 0.0,
        "ratio_min": step_t["min"] / bare_t["min"],
        "peak_mb": step_peak, "bare_peak_mb": bare_peak, "baseline_mb": baseline, "memory": memory.kind,
        "step_phases": step_t["phases"], "bare_phases": bare_t["phases"],
        "step_times": step_t["times"], "bare_times": bare_t["times"], "encode_times": encode_t["times"],
        "cpu_stall_pct": cpu_stall,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
    }


def run_row_subprocess(model: str, method: str, tuning: str, source: str, reference: str, args) -> dict:
    """run_row in a fresh interpreter (clean memory accounting); returns its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", f"{model}:{method}:{tuning}:{source}:{reference}",
           "--options", ",".join(args.options),
           "--pairs", str(args.pairs), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row {model}/{method}/{tuning} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(ROW_TAG):
            return json.loads(line[len(ROW_TAG):])
    raise RuntimeError(f"row {model}/{method}/{tuning} printed no result:\n{proc.stdout[-2000:]}")


# ----------------------------------------------------------------------------------- report

def memory_note(rows: list[dict], in_process: bool) -> str:
    kinds = {row["memory"] for row in rows}
    if kinds == {"cuda_allocated"}:
        return ("peak MB = torch.cuda.max_memory_allocated during a 2-step pass minus the allocation "
                "after loading the model parts")
    note = ("peak MB = peak RSS (VmHWM, reset before each pass) during a 2-step pass minus the RSS after "
            "loading the model parts: reference copy + LoRA + grads + AdamW state + activations, plus some "
            "tens of MB the runtime touches on first use (kernel code pages, malloc arenas; the floor of "
            "the tiny rows)")
    if "ru_maxrss" in kinds:
        note += " (ru_maxrss fallback: lifetime peak, may be dominated by loading)"
    if in_process:
        note += " (in-process rows: approximate, earlier rows' freed memory may be reused)"
    return note


def stall_text(row: dict) -> str:
    return "n/a" if row.get("cpu_stall_pct") is None else f"{row['cpu_stall_pct']:.0f}"


STALL_NOTE = ("CPU stall % = share of the timed loops' wall time in which some task on the machine waited "
              "for a CPU (/proc/pressure/cpu). Well above ~10% the row's times are disturbed: by other "
              "processes, or, in the tiny rows, by the HF tokenizers' own thread pool competing with torch's "
              "OpenMP threads (the recipe sets TOKENIZERS_PARALLELISM=false to avoid that).")


def markdown_table(rows: list[dict], in_process: bool = False) -> str:
    """The main table: per-row step vs bare seconds, ratio, encode time, peak memory."""
    lines = [f"Median s/step over the timed steps; ratio = s/step / bare s/step. {memory_note(rows, in_process)}.",
             STALL_NOTE,
             "",
             "InPO: its inversion (no-grad denoiser forwards: DDIM for the UNets, Euler for SD3) is part of "
             "the method's bare compute; "
             "'inversion s' times it alone; 'encode s' includes it.",
             "",
             "| model | method | tuning | reference | data | options | s/step | bare s/step | ratio | encode s "
             "| inversion s | peak MB | bare peak MB | ratio of mins | CPU stall % |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['tuning']} | {r['reference']} | {r['source']} | "
                     f"{r.get('options', '-')} | {r['step_s']:.3f} | "
                     f"{r['bare_s']:.3f} | {r['ratio']:.2f}x | {r['encode_s']:.3f} | {r.get('inversion_s', 0):.3f} | "
                     f"{r['peak_mb']:.0f} | "
                     f"{r['bare_peak_mb']:.0f} | {r['ratio_min']:.2f}x | {stall_text(r)} |")
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    """Where the time goes: median seconds per phase, step vs bare (step forward includes encode)."""
    lines = ["| model | method | tuning | data | encode | fwd step / bare | bwd step / bare | clip (step) | "
             "optim step / bare |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, b = r["step_phases"], r["bare_phases"]
        lines.append(f"| {r['model']} | {r['method']} | {r['tuning']} | {r['source']} | {r['encode_s']:.3f} | "
                     f"{s['forward']:.3f} / {b['forward']:.3f} | {s['backward']:.3f} / {b['backward']:.3f} | "
                     f"{s['clip']:.3f} | {s['optimizer']:.3f} / {b['optimizer']:.3f} |")
    return "\n".join(lines)


def machine_line(rows: list[dict], args) -> str:
    first = rows[0]
    models = "; ".join(f"{r['model']}: {r.get('denoiser', 'UNet')} {r['unet_params_m']:.1f}M params, "
                       f"{r['resolution']} px -> "
                       f"{r['latent'][0]}x{r['latent'][1]} latents"
                       for r in {row["model"]: row for row in rows}.values())
    return (f"Machine: torch {first['torch']}, {first['threads']} threads, device {first['device']}, "
            f"{os.cpu_count()} CPUs. {args.pairs} pairs/step, {args.warmup} warmup + {args.steps} timed steps, "
            f"fp32, AdamW. Models: {models}.")


def summary_line(rows: list[dict]) -> str:
    ratios = sorted(r["ratio"] for r in rows)
    mins = sorted(r["ratio_min"] for r in rows)
    return (f"step / bare ratio over {len(rows)} rows: median {statistics.median(ratios):.2f}x "
            f"(range {ratios[0]:.2f}x - {ratios[-1]:.2f}x); ratio of min times: median "
            f"{statistics.median(mins):.2f}x (range {mins[0]:.2f}x - {mins[-1]:.2f}x).")


# ----------------------------------------------------------------------------------- main

def row_references(method: str, tuning: str, references: list[str]) -> list[str]:
    """The reference strategies to measure for a row: only full fine-tuning of a method with a
    reference has a choice (LoRA uses adapters_off, SFT / MaPO none)."""
    from t2i_align.objectives import get_objective

    if tuning == "lora" or not get_objective(method_config(method).objective).needs_reference:
        return ["auto"]
    return references


def check_models(models: list[str]) -> None:
    """Fail before any row runs when a pretrained toy model's weights are missing (toy_sd3 is being
    pretrained separately): resolving "toy:<kind>" raises a clear error naming the folder and the
    command that makes them."""
    from t2i_align.models.tiny import resolve_model_path

    for name in models:
        if name in ("toy", "toy_sd3"):
            resolve_model_path("toy:sdxl" if name == "toy" else "toy:sd3")


def split_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"--{what}: unknown {unknown or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), type=lambda s: split_list(s, MODELS, "models"),
                        help=f"default {','.join(DEFAULT_MODELS)}; also flow (the ~19M-param SD3-shaped "
                             "transformer, 64 px) and toy_sd3 (needs the pretrained toy_sd3 weights)")
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: split_list(s, METHODS, "methods"))
    parser.add_argument("--tunings", default=",".join(TUNINGS), type=lambda s: split_list(s, TUNINGS, "tunings"))
    parser.add_argument("--sources", default="images,cache", type=lambda s: split_list(s, SOURCES, "sources"),
                        help="where the step reads pairs: images (VAE + text encoders every step) and/or the latent cache")
    parser.add_argument("--references", default="auto", type=lambda s: split_list(s, REFERENCES, "references"),
                        help="reference strategies of full fine-tuning rows of DPO-family methods "
                             "(auto = copy; LoRA rows always use adapters_off)")
    parser.add_argument("--options", default="", type=lambda s: [o for o in s.split(",") if o],
                        help="denoiser options for every row: compile (trainer.compile), channels_last")
    parser.add_argument("--cache-pairs", type=int, default=32,
                        help="pairs in the cache-build throughput measurement (0: skip it)")
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step (micro-batch size)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--no-subprocess", dest="in_process", action="store_true",
                        help="run every row in this process (fast, for tests; CPU memory numbers approximate)")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: model:method:tuning
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--pairs and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> list[dict]:
    """Benchmark every requested row, print the tables, optionally write JSON; returns the rows."""
    args = parse_args(argv)
    if args.row:  # child mode: one row, one JSON line
        model, method, tuning, source, reference = args.row.split(":")
        row = run_row(model, method, tuning, args.pairs, args.steps, args.warmup, args.device, source, reference,
                      tuple(args.options))
        print(ROW_TAG + json.dumps(row), flush=True)
        return [row]

    check_models(args.models)
    started = time.perf_counter()
    combos = [(m, meth, t, src, ref) for m in args.models for meth in args.methods for t in args.tunings
              for src in args.sources for ref in row_references(meth, t, args.references)]
    rows = []
    for index, (model, method, tuning, source, reference) in enumerate(combos, 1):
        if args.in_process:
            row = run_row(model, method, tuning, args.pairs, args.steps, args.warmup, args.device, source, reference,
                          tuple(args.options))
        else:
            row = run_row_subprocess(model, method, tuning, source, reference, args)
        rows.append(row)
        print(f"[{index}/{len(combos)}] {model} {method} {tuning} {source} {row['reference']}: step "
              f"{row['step_s']:.3f} s, bare {row['bare_s']:.3f} s, ratio {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    throughput = []
    if args.cache_pairs:
        import tempfile

        for model in args.models:
            with tempfile.TemporaryDirectory() as folder:
                throughput.append(cache_build_throughput(model, args.cache_pairs, args.device, Path(folder) / "c"))

    print(machine_line(rows, args))
    print()
    print(markdown_table(rows, args.in_process))
    print()
    print(summary_line(rows))
    print()
    print("Time split (median s per phase; step forward = preference_step, i.e. includes encode):")
    print()
    print(phase_table(rows))
    if throughput:
        print()
        print("Latent cache build (decode + centre crop + VAE on both images and their flips + caption "
              "embeddings + fp16 shard write):")
        print()
        print("| model | pairs | s | pairs/s | KB per pair |")
        print("|---|---:|---:|---:|---:|")
        for t in throughput:
            print(f"| {t['model']} | {t['pairs']} | {t['seconds']:.2f} | {t['pairs_per_s']:.1f} | "
                  f"{t['bytes_per_pair'] / 1024:.1f} |")
    elapsed = time.perf_counter() - started
    print()
    print(f"Total benchmark wall time: {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(rows, args), "wall_s": elapsed,
                                         "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "cache_build": throughput},
                                        indent=2))
    return rows


if __name__ == "__main__":
    main()
