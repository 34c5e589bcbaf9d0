"""The tiny SD3.5-shaped pipeline: built in code with offline tokenizers, saved once, loaded
through the same from_pretrained path as a real SD3 / SD3.5 folder, deterministic."""

import numpy as np
import pytest
import torch

from t2i_align.models.tiny import resolve_model_path
from t2i_align.models.tiny_t5_tokenizer import offline_t5_tokenizer, t5_vocabulary


@pytest.fixture(scope="module")
def pipe(t2i_cache):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"))


def _generate(pipe, **kwargs):
    return pipe(["a red circle on a grey background", "neon style: a cat"], num_inference_steps=2, height=32,
                width=32, generator=torch.Generator().manual_seed(0), max_sequence_length=32, output_type="np",
                **kwargs).images


def test_tiny_sd3_has_the_sd35_parts_and_generates_deterministically(pipe):
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    assert type(pipe.transformer).__name__ == "SD3Transformer2DModel"
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    assert pipe.vae.config.latent_channels == 16
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (1.5305, 0.0609)
    assert pipe.scheduler.config.shift == 3.0
    # SD3.5's dual attention (attn2) and qk-norm are present, so SD3.5-only code paths run
    names = {n for n, _ in pipe.transformer.named_modules()}
    assert "transformer_blocks.0.attn2" in names and "transformer_blocks.1.attn2" not in names
    assert pipe.transformer.config.qk_norm == "rms_norm"
    first, again = _generate(pipe), _generate(pipe)
    assert first.shape == (2, 32, 32, 3) and np.array_equal(first, again)
    # a different prompt changes the image: the text path is wired
    other = pipe(["a blue square", "neon style: a cat"], num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), max_sequence_length=32, output_type="np").images
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])


def test_tiny_sd3_runs_without_t5_as_the_pipeline_allows(t2i_cache):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"), text_encoder_3=None,
                                                    tokenizer_3=None)
    images = _generate(pipe)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_offline_t5_tokenizer_round_trips_and_never_fails(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = offline_t5_tokenizer()
    ids = tokenizer("a red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["\u2581a", "\u2581red", "\u2581circle", "</s>"]
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1 and tokenizer.unk_token_id == 2
    odd = tokenizer("Ünïcödé 猫 🐱 xyzzy").input_ids
    assert odd[-1] == 1 and all(0 <= i < len(t5_vocabulary()) for i in odd)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("a red circle").input_ids == ids


@pytest.mark.parametrize("with_t5", [True, False], ids=["t5", "no-t5"])
def test_sd3_prompt_encoding_equals_the_pipelines(t2i_cache, with_t5):
    from diffusers import StableDiffusion3Pipeline

    from t2i_align.models.prompt_encoding_sd3 import encode_sd3_prompts

    extra = {} if with_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"), **extra)
    captions = ["a red circle on a grey background", "a very long prompt " * 40, "猫"]
    with torch.no_grad():
        ours = encode_sd3_prompts(captions, [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
                                  [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3], max_sequence_length=24,
                                  joint_attention_dim=pipe.transformer.config.joint_attention_dim)
        theirs, _, pooled, _ = pipe.encode_prompt(captions, captions, captions, do_classifier_free_guidance=False,
                                                   max_sequence_length=24)
    assert ours["encoder_hidden_states"].shape == (3, 77 + 24, 96) and ours["pooled_projections"].shape == (3, 80)
    assert torch.equal(ours["encoder_hidden_states"], theirs) and torch.equal(ours["pooled_projections"], pooled)
