"""The sd3 family end to end on the tiny SD3.5-shaped model: every method trains through the real
recipe (full fine-tuning and LoRA), DPO's first step is ln 2, and what it saves loads into
StableDiffusion3Pipeline (a transformer folder, or LoRA weights through load_lora_weights)."""

import json
import math

import numpy as np
import pytest
import torch

from t2i_align.families import detect_family, get_family
from t2i_align.models.tiny import resolve_model_path
from tests.training.helpers import read_metrics, train

SD3 = ["model=tiny_sd3", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2"]


def test_sd3_is_detected_and_its_forward_process_is_rectified_flow(t2i_cache):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    assert detect_family(DiffusionPipeline.load_config(resolve_model_path("tiny:sd3"))) == "sd3"
    family = get_family("sd3")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x_w, x_l = torch.full((2, 16, 2, 2), 0.5), torch.full((2, 16, 2, 2), -1.0)
    noisy, target, t = family.forward_pairs(scheduler, x_w, x_l, torch.Generator().manual_seed(0), "flow")
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.equal(t[:2], t[2:]) and ((t > 0) & (t <= 1000)).all()
    noise = target + torch.cat([x_w, x_l])  # v = noise - x_0
    torch.testing.assert_close(noise[:2], noise[2:])  # one noise draw per pair
    torch.testing.assert_close(noisy, (1 - sigma) * torch.cat([x_w, x_l]) + sigma * noise)


@pytest.mark.parametrize("method", ["sft", "dpo", "mapo", "dcpo", "inpo"])
def test_every_method_trains_on_sd3_full_and_loads_into_the_pipeline(tmp_path, method):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    extra = ["data=generated", f"method={method}"] + (["method.inversion.steps=2"] if method == "inpo" else [])
    run_dir, final = train(tmp_path / method, SD3 + extra)
    records = read_metrics(run_dir)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    if method in ("dpo", "dcpo", "inpo"):
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    info = json.loads((final / "training_info.json").read_text())
    assert info["family"] == "sd3" and info["prediction_type"] == "flow"
    transformer = SD3Transformer2DModel.from_pretrained(final)
    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"), transformer=transformer)
    images = pipe(["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",
                  generator=torch.Generator().manual_seed(0), max_sequence_length=16).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_dpo_lora_on_sd3_trains_adapters_only_and_loads_with_load_lora_weights(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    run_dir, final = train(tmp_path / "lora", SD3 + ["data=generated", "method=dpo", "trainer.lora.enabled=true",
                                                     "trainer.lr=1e-2", "trainer.max_steps=3"])
    assert read_metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    lora = final / "pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file

    keys = load_file(lora)
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(".attn2." in k for k in keys)  # SD3.5's dual attention is adapted too
    run = lambda p: p(["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",  # noqa: E731
                      generator=torch.Generator().manual_seed(0), max_sequence_length=16).images
    assert not any(".lora.down." in k or ".lora.up." in k for k in keys)  # peft names, as the SD3 script
    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"))
    before = run(pipe)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft warns when file keys and config targets disagree
        pipe.load_lora_weights(final)
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    assert len(loaded) == len(keys)  # every saved matrix is in the pipeline's transformer
    trained = {k.removeprefix("transformer."): v for k, v in keys.items()}
    for name, param in loaded.items():
        key = name.replace(".default_0", "").replace(".default", "")  # the adapter's name in the pipeline
        assert torch.equal(param.detach().to(trained[key].dtype), trained[key]), name
    assert not np.array_equal(run(pipe), before)


def test_sd3_resume_is_bit_identical(tmp_path):
    from tests.training.helpers import final_weights

    common = SD3 + ["data=generated", "method=dpo", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    _, a = train(tmp_path / "a", common)
    train(tmp_path / "b", common + ["trainer.stop_after_steps=3"])
    _, b = train(tmp_path / "b", common + ["trainer.resume=latest"])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sd3_runs_evaluate_through_the_families_pipeline(tmp_path):
    """A trained transformer folder and a LoRA run load through evaluation's load_pipeline."""
    from t2i_align.evaluation.sampling import load_pipeline

    run_dir, full = train(tmp_path / "full", SD3 + ["data=generated", "method=sft", "trainer.checkpoint_every=1"])
    from t2i_align.evaluation.checkpoints import resolve_checkpoint

    checkpoint = resolve_checkpoint(run_dir / "checkpoints" / "step_1")  # the denoiser sits in unet/ there
    assert type(load_pipeline("tiny:sd3", family="sd3", unet=checkpoint["unet"])).__name__ == "StableDiffusion3Pipeline"
    _, lora = train(tmp_path / "lora", SD3 + ["data=generated", "method=sft", "trainer.lora.enabled=true"])
    for kwargs in ({"unet": str(full)}, {"lora": str(lora)}):
        pipe = load_pipeline("tiny:sd3", family="sd3", **kwargs)
        assert type(pipe).__name__ == "StableDiffusion3Pipeline"
        images = pipe(["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",
                      max_sequence_length=16).images
        assert np.isfinite(images).all()


def test_sd3_trains_from_the_latent_cache_like_from_images(tmp_path):
    """The cache stores the sd3 text tensors (sequence + pooled) and the VAE posterior; without
    random flips the two paths give the same losses (to 1e-3: Adam's first +-lr updates and DPO's
    beta turn the 1e-7 noise of batched vs single caption encoding into ~5e-4, as for SDXL in
    tests/data/test_latent_cache.py; a wrong latent or caption changes the loss by percents)."""
    common = SD3 + ["data=generated", "method=dpo", "data.random_flip=false"]
    run_images, _ = train(tmp_path / "images", common)
    run_cache, _ = train(tmp_path / "cache", common + ["data.cache.enabled=true", f"data.cache.dir={tmp_path / 'c'}",
                                                       "data.cache.dtype=float32", "data.cache.flip_variants=false"])
    a, b = read_metrics(run_images), read_metrics(run_cache)
    assert a[0]["loss"] == b[0]["loss"]  # step 1: the same latents, noise and conditioning exactly
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
