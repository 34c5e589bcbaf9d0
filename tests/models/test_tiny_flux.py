"""The tiny FLUX.1-dev-shaped pipeline: built in code with offline tokenizers, saved once, loaded
through the same from_pretrained path as a real FLUX.1 folder, deterministic; our prompt encoding
and latent packing equal FluxPipeline's."""

import numpy as np
import pytest
import torch

from t2i_align.models.tiny import resolve_model_path


@pytest.fixture(scope="module")
def pipe(t2i_cache):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(resolve_model_path("tiny:flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, prompts=("a red circle on a grey background", "neon style: a cat"), **kwargs):
    return pipe(list(prompts), num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0),
                max_sequence_length=32, output_type="np", **kwargs).images


def test_tiny_flux_has_the_flux1_dev_parts_and_generates_deterministically(pipe):
    from transformers import CLIPTextModel, T5EncoderModel

    assert type(pipe.transformer).__name__ == "FluxTransformer2DModel"
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.text_encoder_2, T5EncoderModel)
    config = pipe.transformer.config
    assert config.guidance_embeds and config.in_channels == 4 * pipe.vae.config.latent_channels
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert config.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.tokenizer.model_max_length == 77
    first, again = _generate(pipe), _generate(pipe)
    assert first.shape == (2, 32, 32, 3) and np.array_equal(first, again)
    other = _generate(pipe, prompts=("a blue square", "neon style: a cat"))  # the text path is wired
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])
    assert not np.array_equal(first, _generate(pipe, guidance_scale=7.0))  # so is the guidance embedding


def test_flux_prompt_encoding_equals_the_pipelines(pipe):
    from t2i_align.models.prompt_encoding_flux import encode_flux_prompts

    captions = ["a red circle on a grey background", "a very long prompt " * 40, "猫"]
    with torch.no_grad():
        ours = encode_flux_prompts(captions, [pipe.text_encoder, pipe.text_encoder_2],
                                   [pipe.tokenizer, pipe.tokenizer_2], max_sequence_length=24)
        theirs, pooled, text_ids = pipe.encode_prompt(captions, captions, max_sequence_length=24)
    assert ours["encoder_hidden_states"].shape == (3, 24, pipe.text_encoder_2.config.d_model)
    assert torch.equal(ours["encoder_hidden_states"], theirs) and torch.equal(ours["pooled_projections"], pooled)
    assert text_ids.shape == (24, 3) and not text_ids.any()


def test_packing_equals_flux_pipelines_and_round_trips():
    from diffusers import FluxPipeline

    from t2i_align.models.flux_latents import latent_image_ids, pack_latents, unpack_latents

    latents = torch.randn(3, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert packed.shape == (3, 3 * 5, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 3, 4, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), latents)
    # FluxPipeline._unpack_latents takes pixel sizes: 8x VAE
    assert torch.equal(FluxPipeline._unpack_latents(packed, 6 * 8, 10 * 8, 8), latents)
    ids = latent_image_ids(6, 10, "cpu", torch.float32)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(3, 3, 5, "cpu", torch.float32))
    assert ids[6].tolist() == [0.0, 1.0, 1.0]  # token 6 = patch row 1, column 1 (5 columns)
