"""The shipped toy_sd3: loads like any diffusers SD3 folder, is SD3.5-shaped, and follows captions
as strongly as toy_sdxl (measured on its own samples with the toy metrics)."""

import torch

from t2i_align.toy.metrics import colour_of, parse_prompt, style_of
from t2i_align.toy.world import plain_prompts


def test_toy_sd3_loads_with_diffusers_and_follows_prompts():
    from diffusers import StableDiffusion3Pipeline

    from t2i_align.families import pipeline_call_kwargs
    from t2i_align.models.tiny import resolve_model_path

    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_path("toy:sd3"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    assert config.dual_attention_layers and config.qk_norm == "rms_norm"  # SD3.5's layout
    assert sum(p.numel() for p in pipe.transformer.parameters()) < 5e6
    assert pipe.scheduler.config.shift == 3.0 and pipe.vae.config.shift_factor is not None
    assert pipeline_call_kwargs(pipe) == {"max_sequence_length": 16}
    prompts = plain_prompts(24, seed=3, held_out=True)
    rates = {}
    for prefix in ("neon style: ", "plain style: "):
        images = pipe([prefix + p for p in prompts], num_inference_steps=20, guidance_scale=7.0, height=32, width=32,
                      generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                      **pipeline_call_kwargs(pipe)).images
        rates[prefix] = (sum(style_of(im) == "neon" for im in images) / len(images),
                         sum(colour_of(im) == parse_prompt(p)["colour"] for im, p in zip(images, prompts)) / len(images))
    neon_with_neon_prefix, _ = rates["neon style: "]
    neon_with_plain_prefix, colour_plain = rates["plain style: "]
    assert neon_with_neon_prefix >= 0.8 and neon_with_plain_prefix <= 0.1  # the prefix selects the style
    assert colour_plain >= 0.8  # chance is 0.25


def test_load_pipeline_detects_the_family_of_a_local_base():
    """Without model.family, a trained transformer folder on toy:sd3 loads as SD3 (not as a UNet)."""
    from t2i_align.evaluation.sampling import load_pipeline
    from t2i_align.models.tiny import resolve_model_path

    pipe = load_pipeline("toy:sd3", unet=resolve_model_path("toy:sd3"))
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
