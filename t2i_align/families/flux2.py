"""The FLUX.2 family: FLUX.2 [klein] (Flux2KleinPipeline, Qwen3 text encoder) and FLUX.2 [dev]
(Flux2Pipeline, Mistral3 text encoder; pipeline_class picks the pipeline from model_index.json):
Flux2Transformer2DModel, a 32-channel VAE whose latents are patchified 2 x 2 and normalised by
its BatchNorm running statistics, rectified flow with velocity targets.

As diffusers trains FLUX.2 (train_dreambooth_lora_flux2_klein.py, train_dreambooth_lora_flux2.py):
latents = the VAE posterior's mode (latent_dist.mode(), no sampling), patchified and normalised
((x - bn_mean) / bn_std, models/flux2_latents.py; no scaling or shift factor); x_t = (1 - sigma)
x_0 + sigma noise, target v = noise - x_0, one sigma and one noise draw per pair; u ~ uniform
(the scripts' --weighting_scheme none, an unweighted loss) indexes the scheduler's training
table, unshifted because the scheduler shifts dynamically (the pipelines pass mu), so training
sigmas are unshifted although sampling shifts them. FLUX.2's sampling shift (compute_empirical_mu)
depends on the number of sampling steps as well as the token count and the scripts never
apply it while training, so model.flow.dynamic_shift=true is refused. The other model.flow keys
are SD3's (families/sd3.py).

The model latents the step sees are the patchified, normalised [B, 4C, H/2, W/2] (128 channels
for FLUX.2); predict packs them into tokens with 4-axis ids (T, H, W, L) = (0, row, col, 0) and
text ids (0, 0, 0, l), and unpacks the prediction, so the step, errors and objectives are those
of every family. Timesteps handed to the step are sigma * 1000 (as SD3 / FLUX.1); the
transformer takes sigma (it scales by 1000 inside), so predict divides by 1000, as the pipelines do.

Latent cache: the cache stores the posterior mean and std and latent_factors(vae); for FLUX.2
those are the BatchNorm (std, mean) per patchified channel (lists, not the scale / shift numbers of
the AutoencoderKL families), which posterior_latents reads; std of the posterior is unused (mode).

Conditioning: models/prompt_encoding_flux2.py (equal to the pipelines' encode_prompt): three
text-encoder hidden layers stacked per token, max_sequence_length tokens (model.max_sequence_length,
512 by default), no pooled embedding; DCPO's per-image captions give each image its own sequence.
FLUX.2 [klein]'s transformer has no guidance embedding (guidance_embeds false; its pipeline
passes guidance=None and does classifier-free guidance for the base models), so model.guidance
must be null; FLUX.2 [dev]'s is guidance-distilled: model.guidance is the training value of its
guidance embedding, 1.0 by default (README_flux2.md's commands pass --guidance_scale=1; the
script's argparse default is 3.5). InPO's analogue: Euler ODE inversion of x_0 to each pair's own
sigma by the frozen reference, target = the implied velocity (noising/flow.py). There is no T5:
model.use_t5=false is refused. See families/__init__.py for the interface.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.families.guidance import check_guidance
from t2i_align.models.flux2_latents import (batch_norm_factors, latent_ids, normalise, pack_latents, patchify,
                                            text_ids, unpack_latents)
from t2i_align.models.latents import encode_posterior
from t2i_align.noising.flow import (check_flow_settings, euler_invert, flow_noise_pairs, implied_targets,
                                    loss_weighting, sample_u, sigmas_from_table)

NAME = "flux2"
DENOISER_SUBFOLDER = "transformer"
LORA_PREFIX = "transformer"
# Default LoRA targets: the diffusers FLUX.2 scripts' (train_dreambooth_lora_flux2*.py without
# --lora_layers): to_q/k/v and to_out.0 of the double-stream blocks' attention (peft matches name
# suffixes; the context stream's add_*_proj are not in the list), the single-stream blocks'
# fused to_qkv_mlp_proj, and their attn.to_out, named per block because a bare "attn.to_out" would
# also match the double-stream blocks' to_out ModuleList. The scripts name blocks 0-23 (klein 9B
# has 24); we name 0-47 so FLUX.2 [dev]'s 48 single blocks are all covered (names of missing
# blocks match nothing).
SINGLE_BLOCKS = 48
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj") + tuple(
    f"single_transformer_blocks.{i}.attn.to_out" for i in range(SINGLE_BLOCKS))
# LoRA file keys: peft's own names, as the FLUX.2 scripts save them (get_peft_model_state_dict ->
# Flux2KleinPipeline.save_lora_weights).
LORA_KEY_FORMAT = "peft"
REQUIRED_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
TEXT_CACHE = {"hidden": "encoder_hidden_states"}
MAX_SEQUENCE_LENGTH = 512  # the pipelines' and scripts' max_sequence_length default
DEFAULT_GUIDANCE = 1.0  # model.guidance null on a guidance-distilled transformer (FLUX.2 [dev])
# model.flow: the defaults are train_dreambooth_lora_flux2*.py's (--weighting_scheme none: uniform u,
# unweighted loss; --logit_mean 0, --logit_std 1, --mode_scale 1.29 for the other schemes);
# dynamic_shift is accepted only as false (see the module docstring).
FLOW_DEFAULTS = {"weighting_scheme": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
                 "loss_weighting": "none", "dynamic_shift": False}


def claims(model_index: dict) -> bool:
    """FLUX.2 pipelines: a Flux2* pipeline class or a Flux2Transformer2DModel denoiser (FLUX.1's
    FluxPipeline / FluxTransformer2DModel are family flux)."""
    transformer = model_index.get("transformer")
    has_flux2_transformer = isinstance(transformer, (list, tuple)) and len(transformer) == 2 and \
        transformer[1] == "Flux2Transformer2DModel"
    return str(model_index.get("_class_name", "")).startswith("Flux2") or has_flux2_transformer


def is_dev(model_index: dict | None) -> bool:
    """Whether a model_index.json (or a pipeline's config) is FLUX.2 [dev]'s: the Flux2Pipeline
    class or a Mistral3 text encoder (klein's is Qwen3)."""
    index = model_index or {}
    encoder = index.get("text_encoder")
    encoder = encoder[1] if isinstance(encoder, (list, tuple)) and len(encoder) == 2 else ""
    return index.get("_class_name") == "Flux2Pipeline" or str(encoder).startswith("Mistral3")


def pipeline_class(model_index: dict | None = None):
    """Flux2Pipeline for FLUX.2 [dev] (is_dev(model_index)), else Flux2KleinPipeline (FLUX.2
    [klein], also the default without a model_index: LoRA files, whose save_lora_weights is the
    same Flux2LoraLoaderMixin's)."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    return Flux2Pipeline if is_dev(model_index) else Flux2KleinPipeline


def vae_class():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2


def flow_settings(flow: dict | None) -> dict:
    """model.flow over FLOW_DEFAULTS, checked: a clear error for an unknown key or value, and for
    dynamic_shift=true."""
    settings = check_flow_settings(flow, FLOW_DEFAULTS)
    if settings["dynamic_shift"]:
        raise InputError("model.flow.dynamic_shift=true: FLUX.2's sampling shift depends on the number of sampling "
                         "steps (compute_empirical_mu) and its scripts train unshifted; set model.flow.dynamic_shift=false")
    return settings


def check_options(time_ids: str, flow: dict | None = None, guidance: float | None = None) -> None:
    """model.flow and model.guidance are checked (whether the transformer has a guidance embedding
    is checked by predict); FLUX.2 has no micro-conditioning, so model.time_ids is not used."""
    flow_settings(flow)
    check_guidance(guidance)


def load_scheduler(source: str, revision: str | None):
    """(FlowMatchEulerDiscreteScheduler of the pipeline, "flow")."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=revision), "flow"


def _text_tokenizer(tokenizer):
    """The tokenizer behind a processor (FLUX.2 [dev]'s PixtralProcessor), else `tokenizer`."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def sequence_length(tokenizer, max_sequence_length: int | None) -> int:
    """The text token count: model.max_sequence_length, else the pipelines' 512 (or the tokenizer's
    own model_max_length when shorter, as for the tiny model's 128)."""
    length = max_sequence_length or min(MAX_SEQUENCE_LENGTH, getattr(_text_tokenizer(tokenizer), "model_max_length",
                                                                     MAX_SEQUENCE_LENGTH))
    if int(length) < 1:
        raise InputError(f"model.max_sequence_length={length}: FLUX.2 takes at least 1 text token")
    return int(length)


def refuse_no_t5(use_t5: bool) -> None:
    if not use_t5:
        raise InputError("model.use_t5=false: FLUX.2 has no T5 (its one text encoder is Qwen3 or Mistral3); "
                         "remove model.use_t5 or set it to true")


def _component_classes(source: str, revision) -> tuple[str, str]:
    """(text encoder class, tokenizer class) that the pipeline's model_index.json names."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(source, revision=revision)
    names = [index.get(name, [None, None])[1] for name in ("text_encoder", "tokenizer")]
    if not all(names):
        raise InputError(f"{source}: model_index.json names no text_encoder / tokenizer, which FLUX.2 needs")
    return names[0], names[1]


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool,
                       max_sequence_length: int | None = None, use_t5: bool = True) -> tuple[list, list]:
    """([the text encoder] or [] without text encoders, [its tokenizer or processor]), of the
    classes model_index.json names (klein: Qwen3ForCausalLM + Qwen2TokenizerFast; dev:
    Mistral3ForConditionalGeneration + PixtralProcessor), as the pipeline's from_pretrained loads
    them. The tokenizer's model_max_length is set to the training length (sequence_length), which
    encode_prompts reads."""
    import transformers

    refuse_no_t5(use_t5)
    encoder_name, tokenizer_name = _component_classes(source, revision)
    auto = transformers.AutoProcessor if tokenizer_name.endswith("Processor") else transformers.AutoTokenizer
    tokenizer = auto.from_pretrained(source, subfolder="tokenizer", revision=revision)
    _text_tokenizer(tokenizer).model_max_length = sequence_length(tokenizer, max_sequence_length)
    if not with_text_encoders:
        return [], [tokenizer]
    encoder_class = getattr(transformers, encoder_name, None)
    if encoder_class is None:
        raise InputError(f"{source}: the text encoder class {encoder_name} is not in the installed transformers")
    encoder = encoder_class.from_pretrained(source, subfolder="text_encoder", dtype=dtype, revision=revision,
                                            variant=variant)
    return [encoder], [tokenizer]


def load_denoiser(source: str, subfolder: str | None, **kwargs):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel.from_pretrained(source, subfolder=subfolder, **kwargs)


def check_denoiser(model, where: str) -> None:
    if type(model).__name__ != "Flux2Transformer2DModel":
        raise InputError(f"the denoiser from {where} is a {type(model).__name__}, but family='flux2' needs a "
                         "Flux2Transformer2DModel")


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list) -> dict:
    """{"encoder_hidden_states": [B, L, 3 x hidden]} (klein 4B: 3 x 2560; L = the text length)."""
    from t2i_align.models.prompt_encoding_flux2 import encode_flux2_prompts

    if len(text_encoders) != 1 or len(tokenizers) != 1:
        raise InputError(f"family flux2 needs one text encoder and its tokenizer, got {len(text_encoders)} and "
                         f"{len(tokenizers)} (load the parts with load_parts)")
    return encode_flux2_prompts(list(captions), text_encoders[0], tokenizers[0],
                                max_sequence_length=_text_tokenizer(tokenizers[0]).model_max_length)


def sampling_kwargs(pipe) -> dict:
    """Extra pipeline-call arguments so sampling encodes prompts as training does: the text length
    (model.max_sequence_length when evaluation's load_pipeline was given it, else the tokenizer's
    model_max_length as loaded, at most 512). Flux2KleinPipeline's guidance_scale (the
    evaluation's sampling.guidance_scale) is classifier-free guidance for the base models (4.0 is
    its default) and ignored by the step-distilled ones (is_distilled)."""
    options = getattr(pipe, "t2i_text_options", {})
    refuse_no_t5(options.get("use_t5", True))
    return {"max_sequence_length": sequence_length(getattr(pipe, "tokenizer", None),
                                                   options.get("max_sequence_length"))}


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device, guidance: float | None = None) -> dict:
    """The transformer's conditioning (rows: chosen, then rejected): the stacked text states, text
    ids [L, 4] and the guidance value per row (model.guidance; None: DEFAULT_GUIDANCE on a
    guidance-distilled transformer, nothing on klein). Sizes / time ids unused."""
    states = text["encoder_hidden_states"].to(device)
    value = check_guidance(guidance)
    return {"encoder_hidden_states": states, "txt_ids": text_ids(states.shape[1], device, torch.float32),
            "guidance": None if value is None else torch.full((states.shape[0],), value, device=device)}


def _transformer_config(model):
    """The Flux2Transformer2DModel config behind `model`: the transformer itself, a reference
    strategy (its .unet), a DDP / DeepSpeed wrapper (.module) or a torch.compile wrapper (._orig_mod)."""
    for _ in range(4):
        config = getattr(model, "config", None)
        if config is not None and "guidance_embeds" in config:
            return config
        model = next((getattr(model, name) for name in ("unet", "module", "_orig_mod")
                      if getattr(model, name, None) is not None), None)
        if model is None:
            break
    raise InputError("family flux2: cannot find the transformer's config (guidance_embeds) behind the denoiser")


def predict(model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
    """The velocity prediction [B, C, h, w] for patchified latents `noisy`; `timesteps` = sigma *
    1000 (the transformer gets sigma). Packs the latents into tokens with their ids and, for a
    transformer with guidance_embeds, adds the guidance; unpacks the output. `model`: the
    transformer (possibly wrapped) or a reference strategy."""
    _, _, height, width = noisy.shape
    guidance = cond.get("guidance")
    kwargs = {}
    if _transformer_config(model)["guidance_embeds"]:
        kwargs["guidance"] = guidance if guidance is not None else torch.full(
            (noisy.shape[0],), DEFAULT_GUIDANCE, device=noisy.device)
    elif guidance is not None:
        raise InputError(f"model.guidance={guidance[0].item()}: this FLUX.2 transformer has no guidance embedding "
                         "(guidance_embeds false, as FLUX.2 [klein]): set model.guidance=null")
    out = model(hidden_states=pack_latents(noisy), encoder_hidden_states=cond["encoder_hidden_states"],
                timestep=timesteps / 1000, img_ids=latent_ids(height, width, noisy.device, cond["txt_ids"].dtype),
                txt_ids=cond["txt_ids"], **kwargs)
    return unpack_latents(out if torch.is_tensor(out) else out.sample, height, width)


def latent_factors(vae) -> tuple[list[float], list[float]]:
    """The normalisation the latent cache stores for posterior_latents: FLUX.2's BatchNorm (std,
    mean) per patchified channel (in the interface's (scaling_factor, shift_factor) slots)."""
    return batch_norm_factors(vae)


def posterior_latents(mean: torch.Tensor, std: torch.Tensor, generator, scaling_factor, shift_factor) -> torch.Tensor:
    """The model latents of a VAE posterior, in float32: its mode (the mean; `std` and `generator`
    are unused, as the FLUX.2 scripts encode with latent_dist.mode()), patchified and normalised
    by `scaling_factor` = the BatchNorm std and `shift_factor` = its mean (latent_factors)."""
    return normalise(patchify(mean.float()), scaling_factor, shift_factor)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator) -> torch.Tensor:
    """The model latents of `pixels` (posterior_latents of the VAE's posterior)."""
    mean, std = encode_posterior(vae, pixels)
    return posterior_latents(mean, std, generator, *latent_factors(vae))


def _pair_sigmas(noise_scheduler, latents_w: torch.Tensor, generator, flow: dict | None) -> torch.Tensor:
    """One sigma per pair: u from model.flow's weighting scheme indexing the scheduler's
    (unshifted) training table."""
    settings = flow_settings(flow)
    u = sample_u(latents_w.shape[0], generator, latents_w.device, settings["weighting_scheme"],
                 float(settings["logit_mean"]), float(settings["logit_std"]), float(settings["mode_scale"]))
    sigmas, _ = sigmas_from_table(u, noise_scheduler.sigmas, noise_scheduler.timesteps)
    return sigmas.to(latents_w.device)


def forward_pairs(noise_scheduler, latents_w, latents_l, generator, prediction_type: str, flow: dict | None = None):
    """(x_t, velocity target, sigma * 1000), chosen rows first (noising/flow.py); `flow`: model.flow."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w, generator, flow)
    noisy, target, rows = flow_noise_pairs(latents_w, latents_l, sigmas, generator)
    return noisy, target, rows * 1000


def inversion_pairs(noise_scheduler, latents_w, latents_l, predict_fn, generator, prediction_type: str, *,
                    num_steps: int, eta: float, evaluate_at: str, flow: dict | None = None):
    """InPO on flow: Euler inversion of x_0 to each pair's sigma with `predict_fn(x, sigma * 1000)`,
    target = the implied velocity (x_sigma - x_0) / sigma. eta / evaluate_at (DDIM's) are unused."""
    sigmas = _pair_sigmas(noise_scheduler, latents_w, generator, flow)
    latents = latents_w if latents_l is None else torch.cat([latents_w, latents_l])
    rows = sigmas if latents_l is None else torch.cat([sigmas, sigmas])
    inverted = euler_invert(lambda x, s: predict_fn(x, s * 1000).to(x.dtype), latents, rows, num_steps)
    _, target = implied_targets(latents, inverted, rows)
    return inverted, target, rows * 1000


def error_weights(timesteps: torch.Tensor, flow: dict | None = None) -> torch.Tensor | None:
    """Per-row weights of the velocity errors from model.flow.loss_weighting (sigma_sqrt = sigma^-2,
    cosmap); None for "none" (plain MSE, the FLUX.2 scripts' default)."""
    scheme = flow_settings(flow)["loss_weighting"]
    return None if scheme == "none" else loss_weighting(scheme, timesteps.float() / 1000)
