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
from t2i_align.families.guidance import refuse_guidance
from t2i_align.models.latents import encode_latents, latent_factors, posterior_latents, vae_class  # noqa: F401 (interface)
from t2i_align.noising.flow import (check_flow_settings, euler_invert, flow_noise_pairs, implied_targets,
                                    loss_weighting, sample_u, sigmas_from_table)

NAME = "sd3"
DENOISER_SUBFOLDER = "transformer"
LORA_PREFIX = "transformer"
# Default LoRA targets: train_dreambooth_lora_sd3.py's attention set (image and context streams).
# peft matches name suffixes, so SD3.5's dual-attention attn2.to_q/k/v/out.0 are adapted too; the
# last, context-pre-only block has no to_add_out.
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out")
# LoRA file keys: peft's own names (lora_A / lora_B), as train_dreambooth_lora_sd3.py saves them;
# diffusers' legacy conversion knows only to_q/k/v/out and would leave a mixed file whose attention
# weights load_lora_weights silently skips.
LORA_KEY_FORMAT = "peft"
REQUIRED_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2",
                       "tokenizer_2")
TEXT_CACHE = {"hidden": "encoder_hidden_states", "pooled": "pooled_projections"}
MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length (at most 512)
# model.flow: sigma sampling and loss weighting; the defaults are the diffusers SD3 scripts'
# (train_dreambooth_lora_sd3.py: --weighting_scheme logit_normal, --logit_mean 0, --logit_std 1,
# --mode_scale 1.29); loss_weighting "none" = the plain velocity MSE the public Flow-DPO code uses.
FLOW_DEFAULTS = {"weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
                 "loss_weighting": "none"}


def claims(model_index: dict) -> bool:
    """SD3 / SD3.5 pipelines: a StableDiffusion3 class or a transformer with three text encoders."""
    return "StableDiffusion3" in str(model_index.get("_class_name", "")) or (
        "transformer" in model_index and "text_encoder_3" in model_index)


def pipeline_class(model_index: dict | None = None):
    """StableDiffusion3Pipeline (one pipeline class for every model of the family: `model_index` is unused)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline


def flow_settings(flow: dict | None) -> dict:
    """model.flow over FLOW_DEFAULTS, checked: a clear error for an unknown key or value."""
    return check_flow_settings(flow, FLOW_DEFAULTS)


def check_options(time_ids: str, flow: dict | None = None, guidance: float | None = None) -> None:
    """model.flow is checked (flow_settings); SD3 has no micro-conditioning, so model.time_ids is
    not used (any value is accepted), and no guidance embedding, so model.guidance is refused."""
    flow_settings(flow)
    refuse_guidance(guidance)


def load_scheduler(source: str, revision: str | None):
    """(FlowMatchEulerDiscreteScheduler of the pipeline, "flow")."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=revision), "flow"


def sequence_length(tokenizer_3, max_sequence_length: int | None) -> int:
    """The T5 token count: model.max_sequence_length, else the pipeline's 256 (or the tokenizer's
    own model_max_length when shorter, as for the toy model's 16); at most 512 (the pipeline's limit)."""
    length = max_sequence_length or min(MAX_SEQUENCE_LENGTH, getattr(tokenizer_3, "model_max_length",
                                                                     MAX_SEQUENCE_LENGTH))
    if not 1 <= int(length) <= 512:
        raise InputError(f"model.max_sequence_length={length}: SD3 takes 1 to 512 T5 tokens")
    return int(length)


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool,
                       max_sequence_length: int | None = None, use_t5: bool = True) -> tuple[list, list]:
    """([CLIP-L, bigG (CLIPTextModelWithProjection), T5EncoderModel or AbsentT5], [their tokenizers]).

    Without T5 (use_t5=false, or a folder without text_encoder_3; the pipeline allows dropping it
    to save ~10 GB) the third encoder is an AbsentT5 of the transformer's joint_attention_dim:
    zeros, as StableDiffusion3Pipeline(text_encoder_3=None) feeds. The T5 tokenizer's
    model_max_length is set to the training length (sequence_length), which the family's
    encode_prompts and sampling_kwargs read."""
    from pathlib import Path

    from diffusers import SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    from t2i_align.models.prompt_encoding_sd3 import AbsentT5

    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder=sub, revision=revision)
                  for sub in ("tokenizer", "tokenizer_2")]
    local = Path(source).is_dir()
    has_t5 = use_t5 and (not local or (Path(source) / "text_encoder_3").is_dir())
    tokenizer_3 = AutoTokenizer.from_pretrained(source, subfolder="tokenizer_3", revision=revision) if has_t5 else None
    length = sequence_length(tokenizer_3, max_sequence_length)
    if tokenizer_3 is not None:
        tokenizer_3.model_max_length = length
    tokenizers.append(tokenizer_3)
    if not with_text_encoders:
        return [], tokenizers
    kwargs = dict(dtype=dtype, revision=revision, variant=variant)
    encoders = [CLIPTextModelWithProjection.from_pretrained(source, subfolder=sub, **kwargs)
                for sub in ("text_encoder", "text_encoder_2")]
    if has_t5:
        encoders.append(T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", **kwargs))
    else:
        width = SD3Transformer2DModel.load_config(source, subfolder="transformer", revision=revision)[
            "joint_attention_dim"]
        encoders.append(AbsentT5(width, length))
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
    """{"encoder_hidden_states": [B, 77 + L, 4096], "pooled_projections": [B, 2048]} (real SD3;
    L = the T5 length, zeros without T5)."""
    from t2i_align.models.prompt_encoding_sd3 import AbsentT5, encode_sd3_prompts

    t5 = text_encoders[2] if len(text_encoders) > 2 else None
    if t5 is None:
        raise InputError("family sd3: the third text encoder is missing (load the parts with load_parts)")
    if isinstance(t5, AbsentT5):
        return encode_sd3_prompts(list(captions), text_encoders[:2], tokenizers[:2],
                                  max_sequence_length=t5.length, joint_attention_dim=t5.width)
    return encode_sd3_prompts(list(captions), text_encoders, tokenizers,
                              max_sequence_length=tokenizers[2].model_max_length)


def sampling_kwargs(pipe) -> dict:
    """Extra pipeline-call arguments so sampling encodes prompts as training does: the T5 length
    (model.max_sequence_length when evaluation's load_pipeline was given it, else the T5
    tokenizer's model_max_length as loaded: 256 for the hub models, 16 for toy_sd3; without T5
    the pipeline's zeros get the same length)."""
    given = getattr(pipe, "t2i_text_options", {}).get("max_sequence_length")
    return {"max_sequence_length": sequence_length(getattr(pipe, "tokenizer_3", None), given)}


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device, guidance: float | None = None) -> dict:
    """The transformer's conditioning (rows: chosen, then rejected); sizes / time ids unused, and
    guidance (model.guidance: SD3 has no guidance embedding) is refused by check_options."""
    return {"encoder_hidden_states": text["encoder_hidden_states"].to(device),
            "pooled_projections": text["pooled_projections"].to(device)}


def predict(model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
    """The velocity prediction; `timesteps` = sigma * 1000 (what SD3 takes). `model`: the
    transformer (possibly wrapped) or a reference strategy."""
    out = model(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                pooled_projections=cond["pooled_projections"], timestep=timesteps)
    return out if torch.is_tensor(out) else out.sample


def _pair_sigmas(noise_scheduler, num_pairs: int, generator, device, flow: dict | None) -> torch.Tensor:
    """One sigma per pair: u from model.flow's weighting scheme, indexing the shifted table."""
    settings = flow_settings(flow)
    u = sample_u(num_pairs, generator, device, settings["weighting_scheme"], float(settings["logit_mean"]),
                 float(settings["logit_std"]), float(settings["mode_scale"]))
    sigmas, _ = sigmas_from_table(u, noise_scheduler.sigmas, noise_scheduler.timesteps)
    return sigmas.to(device)


def forward_pairs(noise_scheduler, latents_w, latents_l, generator, prediction_type: str, flow: dict | None = None):
    """(x_t, velocity target, sigma * 1000), chosen rows first (noising/flow.py); `flow`: model.flow."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w.shape[0], generator, latents_w.device, flow)
    noisy, target, rows = flow_noise_pairs(latents_w, latents_l, sigmas, generator)
    return noisy, target, rows * 1000


def inversion_pairs(noise_scheduler, latents_w, latents_l, predict_fn, generator, prediction_type: str, *,
                    num_steps: int, eta: float, evaluate_at: str, flow: dict | None = None):
    """InPO on flow: Euler inversion of x_0 to each pair's sigma with `predict_fn(x, sigma * 1000)`,
    target = the implied velocity (x_sigma - x_0) / sigma. eta / evaluate_at (DDIM's) are unused."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w.shape[0], generator, latents_w.device, flow)
    latents = latents_w if latents_l is None else torch.cat([latents_w, latents_l])
    rows = sigmas if latents_l is None else torch.cat([sigmas, sigmas])
    inverted = euler_invert(lambda x, s: predict_fn(x, s * 1000).to(x.dtype), latents, rows, num_steps)
    _, target = implied_targets(latents, inverted, rows)
    return inverted, target, rows * 1000


def error_weights(timesteps: torch.Tensor, flow: dict | None = None) -> torch.Tensor | None:
    """Per-row weights of the velocity errors from model.flow.loss_weighting (diffusers'
    compute_loss_weighting_for_sd3: sigma_sqrt = sigma^-2, cosmap); None for "none" (plain MSE)."""
    scheme = flow_settings(flow)["loss_weighting"]
    return None if scheme == "none" else loss_weighting(scheme, timesteps.float() / 1000)
