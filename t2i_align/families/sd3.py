"""The SD3 family: Stable Diffusion 3 / 3.5 (SD3Transformer2DModel, CLIP-L + OpenCLIP-bigG + T5,
16-channel VAE with shift and scale, rectified flow with velocity targets).

As diffusers trains SD3 (train_dreambooth_lora_sd3.py): latents (x - shift_factor) *
scaling_factor; x_t = (1 - sigma) x_0 + sigma noise, target v = noise - x_0, one sigma and one
noise draw per pair; sigma = the FlowMatchEulerDiscreteScheduler's (statically shifted) training
table indexed by u ~ logit_normal(0, 1), the SD3 script's default; the transformer takes sigma *
1000 as its timestep. Conditioning: models/prompt_encoding_sd3.py (equal to the pipeline's
encode_prompt); DCPO's per-image captions give each image its own sequence and pooled embedding.
InPO's analogue: Euler ODE inversion of x_0 to each pair's own sigma by the frozen reference,
target = the implied velocity (noising/flow.py); the model is evaluated at the start of each
Euler step, so method.inversion.evaluate_at (a DDIM choice) does not apply. Training needs T5
(text_encoder_3); the pipeline's T5-less mode is for sampling. See families/__init__.py for the
interface.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.models.latents import encode_latents, latent_factors, posterior_latents  # noqa: F401 (interface)
from t2i_align.noising.flow import (euler_invert, flow_noise_pairs, implied_targets, sample_u,
                                    sigmas_from_table)

NAME = "sd3"
DENOISER_SUBFOLDER = "transformer"
LORA_PREFIX = "transformer"
REQUIRED_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2",
                       "tokenizer_2")
TEXT_CACHE = {"hidden": "encoder_hidden_states", "pooled": "pooled_projections"}
MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length
WEIGHTING_SCHEME, LOGIT_MEAN, LOGIT_STD = "logit_normal", 0.0, 1.0  # the diffusers SD3 script's defaults


def claims(model_index: dict) -> bool:
    """SD3 / SD3.5 pipelines: a StableDiffusion3 class or a transformer with three text encoders."""
    return "StableDiffusion3" in str(model_index.get("_class_name", "")) or (
        "transformer" in model_index and "text_encoder_3" in model_index)


def pipeline_class():
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline


def check_options(time_ids: str) -> None:
    """SD3 has no micro-conditioning: model.time_ids is not used (any value is accepted)."""


def load_scheduler(source: str, revision: str | None):
    """(FlowMatchEulerDiscreteScheduler of the pipeline, "flow")."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=revision), "flow"


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool) -> tuple[list, list]:
    """([CLIP-L, bigG (CLIPTextModelWithProjection), T5EncoderModel or None], [their tokenizers]);
    T5 is None when the folder has no text_encoder_3 (the pipeline allows dropping it)."""
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder=sub, revision=revision)
                  for sub in ("tokenizer", "tokenizer_2")]
    local = Path(source).is_dir()
    has_t5 = not local or (Path(source) / "text_encoder_3").is_dir()
    tokenizers.append(AutoTokenizer.from_pretrained(source, subfolder="tokenizer_3", revision=revision)
                      if has_t5 else None)
    if not with_text_encoders:
        return [], tokenizers
    kwargs = dict(dtype=dtype, revision=revision, variant=variant)
    encoders = [CLIPTextModelWithProjection.from_pretrained(source, subfolder=sub, **kwargs)
                for sub in ("text_encoder", "text_encoder_2")]
    encoders.append(T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", **kwargs) if has_t5 else None)
    return encoders, tokenizers


def load_denoiser(source: str, subfolder: str | None, **kwargs):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(source, subfolder=subfolder, **kwargs)


def check_denoiser(model, where: str) -> None:
    if type(model).__name__ != "SD3Transformer2DModel":
        raise InputError(f"the denoiser from {where} is a {type(model).__name__}, but family='sd3' needs an "
                         "SD3Transformer2DModel")


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list) -> dict:
    """{"encoder_hidden_states": [B, 77 + 256, 4096], "pooled_projections": [B, 2048]} (real SD3)."""
    from t2i_align.models.prompt_encoding_sd3 import encode_sd3_prompts

    t5 = text_encoders[2] if len(text_encoders) > 2 else None
    if t5 is None:
        raise InputError("family sd3 trains with T5: the model folder needs text_encoder_3 / tokenizer_3")
    width = t5.config.d_model
    length = min(MAX_SEQUENCE_LENGTH, tokenizers[2].model_max_length)
    return encode_sd3_prompts(list(captions), text_encoders, tokenizers, max_sequence_length=length,
                              joint_attention_dim=width)


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device) -> dict:
    """The transformer's conditioning (rows: chosen, then rejected); sizes / time ids unused."""
    return {"encoder_hidden_states": text["encoder_hidden_states"].to(device),
            "pooled_projections": text["pooled_projections"].to(device)}


def predict(model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
    """The velocity prediction; `timesteps` = sigma * 1000 (what SD3 takes). `model`: the
    transformer (possibly wrapped) or a reference strategy."""
    out = model(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                pooled_projections=cond["pooled_projections"], timestep=timesteps)
    return out if torch.is_tensor(out) else out.sample


def _pair_sigmas(noise_scheduler, num_pairs: int, generator, device) -> torch.Tensor:
    u = sample_u(num_pairs, generator, device, WEIGHTING_SCHEME, LOGIT_MEAN, LOGIT_STD)
    sigmas, _ = sigmas_from_table(u, noise_scheduler.sigmas, noise_scheduler.timesteps)
    return sigmas.to(device)


def forward_pairs(noise_scheduler, latents_w, latents_l, generator, prediction_type: str):
    """(x_t, velocity target, sigma * 1000), chosen rows first (noising/flow.py)."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w.shape[0], generator, latents_w.device)
    noisy, target, rows = flow_noise_pairs(latents_w, latents_l, sigmas, generator)
    return noisy, target, rows * 1000


def inversion_pairs(noise_scheduler, latents_w, latents_l, predict_fn, generator, prediction_type: str, *,
                    num_steps: int, eta: float, evaluate_at: str):
    """InPO on flow: Euler inversion of x_0 to each pair's sigma with `predict_fn(x, sigma * 1000)`,
    target = the implied velocity (x_sigma - x_0) / sigma. eta / evaluate_at (DDIM's) are unused."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w.shape[0], generator, latents_w.device)
    latents = latents_w if latents_l is None else torch.cat([latents_w, latents_l])
    rows = sigmas if latents_l is None else torch.cat([sigmas, sigmas])
    inverted = euler_invert(lambda x, s: predict_fn(x, s * 1000).to(x.dtype), latents, rows, num_steps)
    _, target = implied_targets(latents, inverted, rows)
    return inverted, target, rows * 1000
