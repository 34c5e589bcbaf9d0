"""The tiny FLUX.2 [klein]-shaped pipeline: built in code with an offline tokenizer, saved once, loaded
through the same from_pretrained path as a real klein folder, deterministic; our prompt encoding,
latent patchify / normalisation, packing and position ids equal Flux2KleinPipeline's."""

import numpy as np
import pytest
import torch

from t2i_align.models.tiny import resolve_model_path


@pytest.fixture(scope="module")
def pipe(t2i_cache):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(resolve_model_path("tiny:flux2"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, prompts=("a red circle on a grey background", "neon style: a cat"), **kwargs):
    return pipe(prompt=list(prompts), num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(0), max_sequence_length=32, output_type="np", **kwargs).images


def test_tiny_flux2_has_the_klein_parts_and_generates_deterministically(pipe):
    from transformers import Qwen3ForCausalLM

    from t2i_align.models.prompt_encoding_flux2 import KLEIN_LAYERS

    assert type(pipe.transformer).__name__ == "Flux2Transformer2DModel" and type(pipe.vae).__name__ == "AutoencoderKLFlux2"
    assert isinstance(pipe.text_encoder, Qwen3ForCausalLM)
    config = pipe.transformer.config
    assert not config.guidance_embeds and len(config.axes_dims_rope) == 4
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.in_channels == 4 * pipe.vae.config.latent_channels == pipe.vae.bn.num_features
    assert config.joint_attention_dim == len(KLEIN_LAYERS) * pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.num_hidden_layers > max(KLEIN_LAYERS)
    assert not torch.allclose(pipe.vae.bn.running_var, torch.ones_like(pipe.vae.bn.running_var))  # stats matter
    assert pipe.scheduler.config.use_dynamic_shifting
    first, again = _generate(pipe), _generate(pipe)
    assert first.shape == (2, 32, 32, 3) and np.array_equal(first, again)
    other = _generate(pipe, prompts=("a blue square", "neon style: a cat"))  # the text path is wired
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])


def test_offline_qwen_tokenizer_renders_qwen3_turns_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    from t2i_align.models.tiny_qwen_tokenizer import offline_qwen_tokenizer

    tokenizer = offline_qwen_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a red circle"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tokenizer(text).input_ids
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids and len(ids) < len(text)  # whole-word pieces
    assert tokenizer.decode(tokenizer("猫 and 8k").input_ids) == "猫 and 8k"  # bytes cover anything
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again).__name__ == type(tokenizer).__name__ and again.chat_template == tokenizer.chat_template
    assert again(text).input_ids == ids and again.pad_token == "<|endoftext|>"


def test_flux2_prompt_encoding_equals_the_pipelines(pipe):
    from t2i_align.models.flux2_latents import text_ids
    from t2i_align.models.prompt_encoding_flux2 import encode_flux2_prompts

    captions = ["a red circle on a grey background", "a very long prompt " * 40, "猫", ""]
    with torch.no_grad():
        ours = encode_flux2_prompts(captions, pipe.text_encoder, pipe.tokenizer, max_sequence_length=24)
        theirs, their_ids = pipe.encode_prompt(captions, max_sequence_length=24)
    assert ours["encoder_hidden_states"].shape == (4, 24, pipe.transformer.config.joint_attention_dim)
    assert torch.equal(ours["encoder_hidden_states"], theirs)
    assert torch.equal(text_ids(24, "cpu", torch.float32), their_ids[0].float())
    assert their_ids[0, 5].tolist() == [0, 0, 0, 5]


def test_latents_equal_flux2_pipelines_and_round_trip(pipe):
    from t2i_align.families import get_family
    from t2i_align.models.flux2_latents import latent_ids, pack_latents, patchify, unpack_latents, unpatchify

    latents = torch.randn(3, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    patched = patchify(latents)
    assert torch.equal(patched, pipe._patchify_latents(latents)) and torch.equal(unpatchify(patched), latents)
    tokens = pack_latents(patched)
    assert tokens.shape == (3, 15, 16) and torch.equal(tokens, pipe._pack_latents(patched))
    ids = latent_ids(3, 5, "cpu", torch.float32)
    their_ids = pipe._prepare_latent_ids(patched)
    assert torch.equal(ids, their_ids[0].float()) and ids[6].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert torch.equal(unpack_latents(tokens, 3, 5), patched)
    assert torch.equal(pipe._unpack_latents_with_ids(tokens, their_ids, 3, 5), patched)
    # patchify + BatchNorm normalisation of the posterior mode, as the pipeline encodes images
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = get_family("flux2").encode_latents(pipe.vae, pixels, torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = pipe._encode_vae_image(pixels, generator=None)
    assert ours.shape == (2, 16, 8, 8) and torch.equal(ours, theirs)


def test_tiny_flux2_dev_encodes_prompts_as_flux2_pipeline(t2i_cache, tmp_path):
    """The [dev]-shaped variant: Mistral3 + PixtralProcessor (saved and reloaded through
    Flux2Pipeline.from_pretrained), a guidance embedding, our encoding equal to the pipeline's
    (system message, "[IMG]" removed, layers 10 / 20 / 30), and 2-step sampling."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3ForConditionalGeneration

    from t2i_align.models.prompt_encoding_flux2 import DEV_LAYERS, encode_flux2_prompts

    pipe = Flux2Pipeline.from_pretrained(resolve_model_path("tiny:flux2_dev"))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration) and pipe.transformer.config.guidance_embeds
    assert type(pipe.tokenizer).__name__ == "PixtralProcessor"
    assert pipe.text_encoder.config.text_config.num_hidden_layers > max(DEV_LAYERS)
    captions = ["a red circle on a grey background", "a very long prompt " * 40, "猫 [IMG] here", ""]
    with torch.no_grad():
        ours = encode_flux2_prompts(captions, pipe.text_encoder, pipe.tokenizer, max_sequence_length=48)
        theirs, _ = pipe.encode_prompt(captions, max_sequence_length=48)
    assert ours["encoder_hidden_states"].shape == (4, 48, pipe.transformer.config.joint_attention_dim)
    assert torch.equal(ours["encoder_hidden_states"], theirs)
    images = pipe(prompt=["a cat"], num_inference_steps=2, height=32, width=32, output_type="np",
                  generator=torch.Generator().manual_seed(0), max_sequence_length=64).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
