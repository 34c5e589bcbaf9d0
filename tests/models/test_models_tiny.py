import json
import os
import pathlib

import pytest
import torch

from t2i_align.models.tiny import TINY_RESOLUTION, TINY_VERSION, build_tiny_pipeline, resolve_model_path


def test_weights_are_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_pipeline("sd15")
    assert torch.equal(torch.rand(1), expected_next)  # global RNG state restored
    b = build_tiny_pipeline("sd15")
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_sdxl_shapes_match_real_layout():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    pipe = build_tiny_pipeline("sdxl")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    h1, h2 = pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size
    cfg = pipe.unet.config
    assert cfg.cross_attention_dim == h1 + h2
    assert cfg.projection_class_embeddings_input_dim == 6 * cfg.addition_time_embed_dim + h2
    assert pipe.text_encoder_2.config.projection_dim == h2
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.vae_scale_factor * cfg.sample_size == TINY_RESOLUTION


@pytest.mark.parametrize("kind,pred,cls", [("sd21", "v_prediction", "DDIMScheduler"), ("sd15", "epsilon", "PNDMScheduler")])
def test_sd_kinds(kind, pred, cls):
    pipe = build_tiny_pipeline(kind)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert type(pipe.scheduler).__name__ == cls
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.num_train_timesteps, sc.beta_schedule, sc.steps_offset) == (pred, 1000, "scaled_linear", 1)
    assert (sc.beta_start, sc.beta_end) == (0.00085, 0.012)
    assert pipe.unet.config.use_linear_projection == (kind == "sd21")


def test_resolve_materialises_once(tiny_dirs, t2i_cache):
    folder = pathlib.Path(tiny_dirs["sdxl"])
    assert folder == t2i_cache / "tiny" / f"sdxl-{TINY_VERSION}"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert list(folder.glob("unet/*.safetensors")) and not list(folder.rglob("*.bin"))
    stamp = os.stat(folder / "model_index.json").st_mtime_ns
    assert resolve_model_path("tiny:sdxl") == str(folder)
    assert os.stat(folder / "model_index.json").st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_resolve_passes_other_paths_through():
    assert resolve_model_path("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert resolve_model_path("/some/local/folder") == "/some/local/folder"


def test_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="sdxl, sd21, sd15, sd3, flux, flux2, flux2_dev$"):
        resolve_model_path("tiny:sd4")
    with pytest.raises(ValueError, match="known kinds"):
        build_tiny_pipeline("flux3")


def test_saved_pipeline_generates_32px(tiny_dirs):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dirs["sdxl"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", num_inference_steps=2, guidance_scale=3.0, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, TINY_RESOLUTION, TINY_RESOLUTION, 3)
