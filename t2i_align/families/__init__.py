"""Model families: everything that differs between SD 1.5 / 2.1, SDXL and the flow transformers
(SD3 / SD3.5, FLUX.1, FLUX.2) sits behind one interface, one module per family.

get_family(name) returns the family's module. The step (training/step.py), the loop
(training/recipe.py) and the objectives name no family: they call these module-level functions.

What each family module provides (sd.py, sdxl.py, sd3.py, flux.py, flux2.py; unet_ddpm.py holds what the two
UNet families share, guidance.py the model.guidance checks):

- NAME, DENOISER_SUBFOLDER, LORA_PREFIX (the denoiser's folder and LoRA-file prefix), LORA_TARGETS
  (default trainer.lora.target_modules), LORA_KEY_FORMAT ("diffusers" or "peft" key names in LoRA
  files, as the family's diffusers script saves them), REQUIRED_SUBFOLDERS (of a diffusers pipeline folder), claims(model_index) -> bool
  (auto-detection from model_index.json; families are tried in FAMILIES order);
- loading: load_scheduler(source, revision) -> (scheduler, prediction_type),
  load_text_encoders(source, revision=, variant=, dtype=, with_text_encoders=,
  max_sequence_length=, use_t5=) -> (encoders, tokenizers) (the T5 options refused by families
  without T5), load_denoiser(source, subfolder, **from_pretrained kwargs), check_denoiser(model,
  where), check_options(time_ids, flow, guidance) (the family's model options: model.time_ids,
  model.flow, model.guidance; a family refuses the options it has no use for),
  pipeline_class(model_index=None) (the diffusers pipeline for sampling, dataset building and LoRA
  files; FLUX.2 picks [dev]'s or [klein]'s from the model_index.json, or a pipeline's config, given),
  vae_class() (the diffusers VAE class: AutoencoderKL, FLUX.2's AutoencoderKLFlux2),
  sampling_kwargs(pipe) (extra pipeline-call arguments, e.g. SD3's max_sequence_length);
- text: encode_prompts(captions, text_encoders, tokenizers) -> dict of tensors; TEXT_CACHE
  (cache name -> encode_prompts key: what the latent cache stores); conditioning(text,
  original_sizes_w=, original_sizes_l=, crop_top_left=, with_rejected=, resolution=, time_ids=,
  device=, guidance=) -> the denoiser's conditioning (guidance: model.guidance, FLUX.1-dev's
  guidance embedding);
- latents: encode_latents(vae, pixels, generator), posterior_latents(mean, std, generator,
  scaling_factor, shift_factor), latent_factors(vae) -> (scaling_factor, shift_factor): the
  normalisation posterior_latents applies, JSON-able as the latent cache stores it (numbers for
  the AutoencoderKL families; FLUX.2: its BatchNorm std and mean, one per patchified channel);
- forward process and denoiser: forward_pairs(scheduler, latents_w, latents_l, generator,
  prediction_type, flow) -> (x_t, target, t); inversion_pairs(..., predict_fn, ..., num_steps=, eta=,
  evaluate_at=, flow=) -> (x_t, target, t); predict(model, x_t, t, conditioning) -> the prediction
  in x_t's [B, C, H, W] layout (a family whose denoiser takes packed tokens, FLUX / FLUX.2, packs
  and unpacks inside); the flow families' t is sigma * 1000 whatever their denoiser takes;
  error_weights(t, flow) -> per-row weights of the errors or None (SD3's loss weighting).

A new family: one module here (registered in FAMILIES), one conf/model file, a tiny model built
in code (models/tiny.py), and its tests (tests/families/).
"""

from __future__ import annotations

from types import ModuleType

from t2i_align.errors import InputError
from t2i_align.families import flux, flux2, sd, sd3, sdxl

# Detection order: the first family whose claims(model_index) is true (sd3 and flux before sdxl: all
# three have a second text encoder; flux2 claims only Flux2* pipelines and transformers, flux only
# FLUX.1's; sd claims any pipeline).
FAMILIES: dict[str, ModuleType] = {sd3.NAME: sd3, flux.NAME: flux, flux2.NAME: flux2, sdxl.NAME: sdxl, sd.NAME: sd}

INTERFACE = ("NAME", "DENOISER_SUBFOLDER", "LORA_PREFIX", "LORA_TARGETS", "LORA_KEY_FORMAT", "REQUIRED_SUBFOLDERS", "TEXT_CACHE", "claims", "pipeline_class", "vae_class", "load_scheduler",
             "load_text_encoders", "load_denoiser", "check_denoiser", "check_options", "encode_prompts",
             "conditioning", "encode_latents", "posterior_latents", "latent_factors", "forward_pairs",
             "inversion_pairs", "predict", "error_weights", "sampling_kwargs")


def get_family(name) -> ModuleType:
    """The module of family `name` ("sd", "sdxl", "sd3", "flux", "flux2"); a family module passes through unchanged."""
    if isinstance(name, ModuleType):
        return name
    if name not in FAMILIES:
        raise InputError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect_family(model_index: dict) -> str:
    """The name of the first family that claims a pipeline's model_index.json."""
    return next(name for name, family in FAMILIES.items() if family.claims(model_index))


def pipeline_call_kwargs(pipe, lora_scale: float | None = None) -> dict:
    """Extra arguments for calling a diffusers pipeline `pipe` so it samples as its family trains
    (the family's sampling_kwargs, e.g. SD3's T5 length) and, when `lora_scale` is given, the LoRA
    scale under the name the pipeline takes (cross_attention_kwargs for the UNet pipelines,
    joint_attention_kwargs for SD3 / FLUX.1, attention_kwargs for FLUX.2's)."""
    import inspect

    kwargs = {}
    for family in FAMILIES.values():
        if isinstance(pipe, family.pipeline_class(dict(getattr(pipe, "config", None) or {}))):
            kwargs.update(family.sampling_kwargs(pipe))
            break
    if lora_scale is not None:
        parameters = inspect.signature(pipe.__call__).parameters
        name = next((n for n in ("joint_attention_kwargs", "attention_kwargs") if n in parameters),
                    "cross_attention_kwargs")
        kwargs[name] = {"scale": float(lora_scale)}
    return kwargs


def negative_prompt_kwargs(pipe, negative_prompt: str | None, count: int) -> dict:
    """{"negative_prompt": [negative_prompt] * count}, or {} without one; a one-line error for a
    pipeline whose call takes no negative prompt (Flux2KleinPipeline encodes "" itself)."""
    import inspect

    if not negative_prompt:
        return {}
    if "negative_prompt" not in inspect.signature(pipe.__call__).parameters:
        raise InputError(f"negative_prompt={negative_prompt!r}: {type(pipe).__name__} takes no negative prompt; "
                         "set it to null")
    return {"negative_prompt": [negative_prompt] * count}


__all__ = ["FAMILIES", "INTERFACE", "detect_family", "get_family", "negative_prompt_kwargs", "pipeline_call_kwargs"]
