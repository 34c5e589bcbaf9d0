import pytest
import torch

from t2i_align.families.sdxl import sdxl_time_ids
from t2i_align.models.prompt_encoding import encode_prompts

CAPTIONS = ["a photo of a cat", "an oil painting of a lighthouse at dusk, dramatic light!", "x " * 100]


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_dirs):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_dirs["sdxl"])


def test_sdxl_matches_pipeline(sdxl_pipe):
    pipe = sdxl_pipe
    out = encode_prompts(CAPTIONS, [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2], "sdxl")
    embeds, _, pooled, _ = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False)
    assert out["encoder_hidden_states"].shape == (3, 77, pipe.unet.config.cross_attention_dim)
    assert out["text_embeds"].shape == (3, pipe.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(out["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(out["text_embeds"], pooled, rtol=0, atol=0)
    assert not out["encoder_hidden_states"].requires_grad


@pytest.mark.parametrize("kind", ["sd21", "sd15"])
def test_sd_matches_pipeline(kind, tiny_dirs):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs[kind], safety_checker=None)
    out = encode_prompts(CAPTIONS, [pipe.text_encoder], [pipe.tokenizer], "sd")
    embeds, _ = pipe.encode_prompt(CAPTIONS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert set(out) == {"encoder_hidden_states"}
    torch.testing.assert_close(out["encoder_hidden_states"], embeds, rtol=0, atol=0)


def test_bad_arguments(sdxl_pipe):
    pipe = sdxl_pipe
    with pytest.raises(ValueError, match="sdxl needs 2 text encoders"):
        encode_prompts(["a"], [pipe.text_encoder], [pipe.tokenizer], "sdxl")
    with pytest.raises(ValueError, match="unknown model family"):
        encode_prompts(["a"], [pipe.text_encoder], [pipe.tokenizer], "sd4")
    with pytest.raises(TypeError, match="list of captions"):
        encode_prompts("a", [pipe.text_encoder], [pipe.tokenizer], "sd")


def test_sdxl_time_ids():
    ids = sdxl_time_ids(torch.tensor([[512, 768], [1024, 1024]]), torch.tensor([[0, 128], [16, 0]]), (1024, 1024))
    assert ids.dtype == torch.float32
    assert ids.tolist() == [[512, 768, 0, 128, 1024, 1024], [1024, 1024, 16, 0, 1024, 1024]]
    fixed = sdxl_time_ids(torch.tensor([[32, 32]]), torch.zeros(1, 2), (32, 48))
    assert fixed.tolist() == [[32, 32, 0, 0, 32, 48]]
    with pytest.raises(ValueError, match="crop_top_left"):
        sdxl_time_ids(torch.ones(2, 2), torch.zeros(1, 2), (8, 8))
    with pytest.raises(ValueError, match="original_sizes"):
        sdxl_time_ids(torch.ones(2), torch.zeros(2), (8, 8))


def test_time_ids_drive_the_tiny_unet(sdxl_pipe, unet_inputs):
    """The [B, 6] ids are what the SDXL UNet's added_cond_kwargs expect."""
    inputs = unet_inputs(sdxl_pipe.unet, batch=2)
    inputs["added_cond_kwargs"]["time_ids"] = sdxl_time_ids(torch.tensor([[32, 32], [40, 36]]), torch.zeros(2, 2), (32, 32))
    with torch.no_grad():
        out = sdxl_pipe.unet(**inputs).sample
    assert out.shape == inputs["sample"].shape
