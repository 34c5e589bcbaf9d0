"""What training saves loads into diffusers pipelines and generates."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from t2i_align.models.tiny import resolve_model_path
from tests.training.helpers import train

PIPELINES = {"tiny_sdxl": StableDiffusionXLPipeline, "tiny_sd21": StableDiffusionPipeline}


def generate(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.mark.parametrize("model", ["tiny_sdxl", "tiny_sd21"])
def test_lora_loads_with_load_lora_weights_and_changes_images(tmp_path, model):
    _, final = train(tmp_path / "run", [f"model={model}", "method=dpo", "trainer.lora.enabled=true",
                                        "trainer.lora.rank=4", "trainer.lora.alpha=8", "trainer.lr=5e-2"])
    pipe = PIPELINES[model].from_pretrained(resolve_model_path(f"tiny:{model.split('_')[1]}"))
    base = generate(pipe)
    pipe.load_lora_weights(str(final))
    aligned = generate(pipe)
    assert aligned.shape == (32, 32, 3) and np.isfinite(aligned).all()
    assert np.abs(aligned - base).max() > 1e-4


@pytest.mark.parametrize("model", ["tiny_sdxl", "tiny_sd21"])
def test_full_unet_folder_loads_into_pipeline(tmp_path, model):
    _, final = train(tmp_path / "run", [f"model={model}", "method=mapo", "trainer.lr=1e-3"])
    unet = UNet2DConditionModel.from_pretrained(final)
    pipe = PIPELINES[model].from_pretrained(resolve_model_path(f"tiny:{model.split('_')[1]}"), unet=unet)
    image = generate(pipe)
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    info = (final / "training_info.json").read_text()
    assert '"method": "mapo"' in info
