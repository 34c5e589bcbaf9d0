"""The FLUX.1 family: FLUX.1-dev / -schnell (FluxTransformer2DModel, CLIP-L pooled + T5, 16-channel
VAE with shift and scale, 2x2-packed latents, rectified flow with velocity targets).

As diffusers trains FLUX.1 (train_dreambooth_lora_flux.py): latents (x - shift_factor) *
scaling_factor (0.1159 / 0.3611); x_t = (1 - sigma) x_0 + sigma noise, target v = noise - x_0,
one sigma and one noise draw per pair; u ~ uniform (the script's --weighting_scheme none, with an
unweighted loss) indexes the FlowMatchEulerDiscreteScheduler's training table, which is NOT
shifted when the scheduler uses dynamic shifting (FLUX.1-dev's), so training sigmas are
unshifted although sampling shifts them. model.flow.dynamic_shift=true applies the sampling
shift to the training sigmas too: mu from the image token count as FluxPipeline's
calculate_shift (0.5 at 256 tokens, 1.15 at 4096), sigma <- the scheduler's time_shift(mu, 1,
sigma) (SimpleTuner's flux_schedule_auto_shift does the same). The other model.flow keys are
SD3's (families/sd3.py).

The denoiser call packs the [B, C, H, W] latents into 2x2 patches ([B, HW/4, 4C], with image
position ids (0, row, col)) and unpacks the prediction (models/flux_latents.py), so predict
returns [B, C, H, W] velocities and the step, errors and objectives are those of every family.
The timesteps the family hands the step are sigma * 1000, as for SD3 and as FluxPipeline's own
timesteps (metrics and model.flow.loss_weighting read them the same way); the transformer takes
sigma (it scales by 1000 inside), so predict divides by 1000, as FluxPipeline does.

Conditioning: models/prompt_encoding_flux.py (equal to FluxPipeline.encode_prompt): T5 states
(model.max_sequence_length, 512 by default) + CLIP-L pooler_output, text ids zeros; DCPO's
per-image captions give each image its own sequence and pooled embedding. FLUX.1-dev is
guidance-distilled (guidance_embeds): model.guidance is the value fed to the guidance embedding
while training, 1.0 by default (every README command of train_dreambooth_lora_flux.py passes
--guidance_scale=1, though its argparse default is 3.5; SimpleTuner's default is 1.0); it is
passed only to a transformer with guidance_embeds (FLUX.1-schnell has none and refuses a set
value). InPO's analogue: Euler ODE inversion of x_0 to each pair's own sigma by the frozen
reference, with the same conditioning and guidance, target = the implied velocity
(noising/flow.py); method.inversion.evaluate_at (a DDIM choice) does not apply. FLUX.1 has no
T5-less mode: model.use_t5=false is refused. See families/__init__.py for the interface.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError
from t2i_align.families.guidance import check_guidance
from t2i_align.models.flux_latents import latent_image_ids, pack_latents, text_ids, unpack_latents
from t2i_align.models.latents import encode_latents, latent_factors, posterior_latents, vae_class  # noqa: F401 (interface)
from t2i_align.noising.flow import (check_flow_settings, euler_invert, flow_noise_pairs, implied_targets,
                                    loss_weighting, sample_u, sigmas_from_table)

NAME = "flux"
DENOISER_SUBFOLDER = "transformer"
LORA_PREFIX = "transformer"
# Default LoRA targets: train_dreambooth_lora_flux.py's (its --lora_layers default): attention of
# both streams and the feed-forwards of the double-stream blocks. peft matches name suffixes, so
# the single-stream blocks' attn.to_q/k/v are adapted too (they have no to_out; their proj_mlp /
# proj_out are not in the list), as in the diffusers script.
LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")
# LoRA file keys: peft's own names (lora_A / lora_B), as train_dreambooth_lora_flux.py saves them
# (get_peft_model_state_dict -> FluxPipeline.save_lora_weights).
LORA_KEY_FORMAT = "peft"
REQUIRED_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2",
                       "tokenizer_2")
TEXT_CACHE = {"hidden": "encoder_hidden_states", "pooled": "pooled_projections"}
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's and train_dreambooth_lora_flux.py's T5 length (also its limit)
DEFAULT_GUIDANCE = 1.0  # model.guidance null on a guidance-distilled transformer (see the module docstring)
# model.flow: the defaults are train_dreambooth_lora_flux.py's (--weighting_scheme none: uniform u,
# unweighted loss; --logit_mean 0, --logit_std 1, --mode_scale 1.29 for the other schemes) and
# unshifted training sigmas (dynamic_shift false) as that script trains FLUX.1-dev.
FLOW_DEFAULTS = {"weighting_scheme": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
                 "loss_weighting": "none", "dynamic_shift": False}


def claims(model_index: dict) -> bool:
    """FLUX.1 pipelines: the FluxPipeline class or a FluxTransformer2DModel denoiser (FLUX.2's
    Flux2Pipeline / Flux2Transformer2DModel are another family)."""
    transformer = model_index.get("transformer")
    has_flux_transformer = isinstance(transformer, (list, tuple)) and len(transformer) == 2 and \
        transformer[1] == "FluxTransformer2DModel"
    return model_index.get("_class_name") == "FluxPipeline" or has_flux_transformer


def pipeline_class(model_index: dict | None = None):
    """FluxPipeline (one pipeline class for every model of the family: `model_index` is unused)."""
    from diffusers import FluxPipeline

    return FluxPipeline


def flow_settings(flow: dict | None) -> dict:
    """model.flow over FLOW_DEFAULTS, checked: a clear error for an unknown key or value."""
    return check_flow_settings(flow, FLOW_DEFAULTS)


def check_options(time_ids: str, flow: dict | None = None, guidance: float | None = None) -> None:
    """model.flow and model.guidance are checked; FLUX has no micro-conditioning, so model.time_ids
    is not used (any value is accepted)."""
    flow_settings(flow)
    check_guidance(guidance)


def load_scheduler(source: str, revision: str | None):
    """(FlowMatchEulerDiscreteScheduler of the pipeline, "flow")."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=revision), "flow"


def sequence_length(tokenizer_2, max_sequence_length: int | None) -> int:
    """The T5 token count: model.max_sequence_length, else the pipeline's 512 (or the tokenizer's own
    model_max_length when shorter, as for the tiny model's 256); at most 512 (the pipeline's limit)."""
    length = max_sequence_length or min(MAX_SEQUENCE_LENGTH, getattr(tokenizer_2, "model_max_length",
                                                                     MAX_SEQUENCE_LENGTH))
    if not 1 <= int(length) <= MAX_SEQUENCE_LENGTH:
        raise InputError(f"model.max_sequence_length={length}: FLUX takes 1 to 512 T5 tokens")
    return int(length)


def refuse_no_t5(use_t5: bool) -> None:
    if not use_t5:
        raise InputError("model.use_t5=false: FLUX.1 has no T5-less mode (T5 gives its only text sequence); "
                         "remove model.use_t5 or set it to true")


def load_text_encoders(source: str, *, revision, variant, dtype, with_text_encoders: bool,
                       max_sequence_length: int | None = None, use_t5: bool = True) -> tuple[list, list]:
    """([CLIPTextModel (CLIP-L), T5EncoderModel] or [] without text encoders, [CLIPTokenizer, T5
    tokenizer]). The T5 tokenizer's model_max_length is set to the training length
    (sequence_length), which encode_prompts and sampling_kwargs read."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    refuse_no_t5(use_t5)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
    tokenizer_2 = AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2", revision=revision)
    tokenizer_2.model_max_length = sequence_length(tokenizer_2, max_sequence_length)
    if not with_text_encoders:
        return [], [tokenizer, tokenizer_2]
    kwargs = dict(dtype=dtype, revision=revision, variant=variant)
    encoders = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs),
                T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", **kwargs)]
    return encoders, [tokenizer, tokenizer_2]


def load_denoiser(source: str, subfolder: str | None, **kwargs):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(source, subfolder=subfolder, **kwargs)


def check_denoiser(model, where: str) -> None:
    if type(model).__name__ != "FluxTransformer2DModel":
        raise InputError(f"the denoiser from {where} is a {type(model).__name__}, but family='flux' needs a "
                         "FluxTransformer2DModel")


@torch.no_grad()
def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list) -> dict:
    """{"encoder_hidden_states": [B, L, 4096], "pooled_projections": [B, 768]} (real FLUX.1; L =
    the T5 length)."""
    from t2i_align.models.prompt_encoding_flux import encode_flux_prompts

    if len(tokenizers) != 2:
        raise InputError(f"family flux needs a CLIP and a T5 tokenizer, got {len(tokenizers)}")
    return encode_flux_prompts(list(captions), text_encoders, tokenizers,
                               max_sequence_length=tokenizers[1].model_max_length)


def sampling_kwargs(pipe) -> dict:
    """Extra pipeline-call arguments so sampling encodes prompts as training does: the T5 length
    (model.max_sequence_length when evaluation's load_pipeline was given it, else the T5
    tokenizer's model_max_length as loaded: 512 for the hub models). FluxPipeline's guidance_scale
    (the evaluation's sampling.guidance_scale) is FLUX.1-dev's embedded (distilled) guidance, not
    classifier-free guidance: 3.5 is the pipeline's default; true CFG is its true_cfg_scale."""
    options = getattr(pipe, "t2i_text_options", {})
    refuse_no_t5(options.get("use_t5", True))
    return {"max_sequence_length": sequence_length(getattr(pipe, "tokenizer_2", None),
                                                   options.get("max_sequence_length"))}


def conditioning(text: dict, *, original_sizes_w, original_sizes_l, crop_top_left, with_rejected: bool,
                 resolution: int, time_ids: str, device, guidance: float | None = None) -> dict:
    """The transformer's conditioning (rows: chosen, then rejected): T5 states, pooled CLIP, text
    ids (zeros [L, 3]) and the guidance value per row (model.guidance; None: DEFAULT_GUIDANCE on a
    guidance-distilled transformer, nothing on schnell). Sizes / time ids unused."""
    states = text["encoder_hidden_states"].to(device)
    value = check_guidance(guidance)
    return {"encoder_hidden_states": states, "pooled_projections": text["pooled_projections"].to(device),
            "txt_ids": text_ids(states.shape[1], device, torch.float32),
            "guidance": None if value is None else torch.full((states.shape[0],), value, device=device)}


def _transformer_config(model):
    """The FluxTransformer2DModel config behind `model`: the transformer itself, a reference
    strategy (its .unet), a DDP / DeepSpeed wrapper (.module) or a torch.compile wrapper (._orig_mod)."""
    for _ in range(4):
        config = getattr(model, "config", None)
        if config is not None and "guidance_embeds" in config:
            return config
        model = next((getattr(model, name) for name in ("unet", "module", "_orig_mod")
                      if getattr(model, name, None) is not None), None)
        if model is None:
            break
    raise InputError("family flux: cannot find the transformer's config (guidance_embeds) behind the denoiser")


def predict(model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
    """The velocity prediction [B, C, H, W] for unpacked latents `noisy`; `timesteps` = sigma * 1000
    (the transformer gets sigma). Packs the latents, adds the image ids and, for a transformer with
    guidance_embeds, the guidance; unpacks the output. `model`: the transformer (possibly wrapped)
    or a reference strategy."""
    _, _, height, width = noisy.shape
    guidance = cond.get("guidance")
    kwargs = {}
    if _transformer_config(model)["guidance_embeds"]:
        kwargs["guidance"] = guidance if guidance is not None else torch.full(
            (noisy.shape[0],), DEFAULT_GUIDANCE, device=noisy.device)
    elif guidance is not None:
        raise InputError(f"model.guidance={guidance[0].item()}: this FLUX transformer has no guidance embedding "
                         "(guidance_embeds false, as FLUX.1-schnell): set model.guidance=null")
    out = model(hidden_states=pack_latents(noisy), encoder_hidden_states=cond["encoder_hidden_states"],
                pooled_projections=cond["pooled_projections"], timestep=timesteps / 1000,
                img_ids=latent_image_ids(height, width, noisy.device, cond["txt_ids"].dtype), txt_ids=cond["txt_ids"],
                **kwargs)
    return unpack_latents(out if torch.is_tensor(out) else out.sample, height, width)


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """FluxPipeline's mu: linear in the image token count, base_shift at base_seq_len, max_shift at
    max_seq_len (diffusers pipeline_flux.calculate_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def dynamic_shift(noise_scheduler, sigmas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`sigmas` shifted as FluxPipeline shifts its sampling sigmas for H x W latents
    ((H/2)(W/2) image tokens): the scheduler's time_shift(mu, 1, sigma) with mu = calculate_shift
    from the scheduler config. Refused for a scheduler without dynamic shifting (FLUX.1-schnell's
    samples unshifted)."""
    config = noise_scheduler.config
    if not config.get("use_dynamic_shifting", False):
        raise InputError("model.flow.dynamic_shift=true: this scheduler does not shift dynamically "
                         "(use_dynamic_shifting false, as FLUX.1-schnell's); set model.flow.dynamic_shift=false")
    mu = calculate_shift((height // 2) * (width // 2), config.get("base_image_seq_len", 256),
                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                         config.get("max_shift", 1.15))
    return noise_scheduler.time_shift(mu, 1.0, sigmas)


def _pair_sigmas(noise_scheduler, latents_w: torch.Tensor, generator, flow: dict | None) -> torch.Tensor:
    """One sigma per pair: u from model.flow's weighting scheme indexing the scheduler's training
    table (unshifted under dynamic shifting), then the dynamic shift if model.flow.dynamic_shift."""
    settings = flow_settings(flow)
    u = sample_u(latents_w.shape[0], generator, latents_w.device, settings["weighting_scheme"],
                 float(settings["logit_mean"]), float(settings["logit_std"]), float(settings["mode_scale"]))
    sigmas, _ = sigmas_from_table(u, noise_scheduler.sigmas, noise_scheduler.timesteps)
    if settings["dynamic_shift"]:
        sigmas = dynamic_shift(noise_scheduler, sigmas, *latents_w.shape[-2:])
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
    cosmap); None for "none" (plain MSE, train_dreambooth_lora_flux.py's default)."""
    scheme = flow_settings(flow)["loss_weighting"]
    return None if scheme == "none" else loss_weighting(scheme, timesteps.float() / 1000)
