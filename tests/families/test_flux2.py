"""The flux2 family end to end on the tiny FLUX.2 [klein]-shaped model: every method trains through the
real recipe (full fine-tuning and LoRA), DPO's first step is ln 2, and what it saves loads into
Flux2KleinPipeline (a transformer folder, or LoRA weights through load_lora_weights)."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from t2i_align.errors import InputError
from t2i_align.families import detect_family, get_family
from t2i_align.models.tiny import resolve_model_path
from tests.training.helpers import read_metrics, train

FLUX2 = ["model=tiny_flux2", "data=generated", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2",
         "model.max_sequence_length=32"]


def _sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0), max_sequence_length=32).images


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2i_align.models.tiny_flux2 import SCHEDULER_CONFIG

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def test_flux2_is_detected_and_its_forward_process_is_rectified_flow(t2i_cache):
    from diffusers import DiffusionPipeline

    assert detect_family(DiffusionPipeline.load_config(resolve_model_path("tiny:flux2"))) == "flux2"
    family = get_family("flux2")
    x_w, x_l = torch.full((2, 16, 2, 2), 0.5), torch.full((2, 16, 2, 2), -1.0)
    noisy, target, t = family.forward_pairs(_scheduler(), x_w, x_l, torch.Generator().manual_seed(0), "flow")
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.equal(t[:2], t[2:]) and ((t > 0) & (t <= 1000)).all()
    noise = target + torch.cat([x_w, x_l])  # v = noise - x_0
    torch.testing.assert_close(noise[:2], noise[2:])  # one noise draw per pair
    torch.testing.assert_close(noisy, (1 - sigma) * torch.cat([x_w, x_l]) + sigma * noise)


def test_predict_packs_unpacks_and_passes_sigma_4_axis_ids_and_guidance():
    """predict hands the transformer tokens, sigma (t / 1000), [tokens, 4] ids and (with a guidance
    embedding) the guidance, and returns the unpacked [B, C, h, w] prediction."""
    family, seen = get_family("flux2"), {}

    class Recorder(torch.nn.Module):
        config = {"guidance_embeds": True}

        def forward(self, **kwargs):
            seen.clear()
            seen.update(kwargs)
            return kwargs["hidden_states"] * 2

    x = torch.randn(2, 16, 2, 3, generator=torch.Generator().manual_seed(0))
    text = {"encoder_hidden_states": torch.zeros(2, 5, 8)}
    cond = family.conditioning(text, original_sizes_w=None, original_sizes_l=None, crop_top_left=None,
                               with_rejected=False, resolution=32, time_ids="fixed", device="cpu", guidance=2.5)
    pred = family.predict(Recorder(), x, torch.tensor([250.0, 750.0]), cond)
    torch.testing.assert_close(pred, x * 2)  # unpacked back exactly
    assert seen["hidden_states"].shape == (2, 2 * 3, 16) and "pooled_projections" not in seen
    torch.testing.assert_close(seen["timestep"], torch.tensor([0.25, 0.75]))
    assert seen["img_ids"].shape == (6, 4) and seen["img_ids"][4].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert seen["txt_ids"][:, 3].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and not seen["txt_ids"][:, :3].any()
    assert seen["guidance"].tolist() == [2.5, 2.5]
    Recorder.config = {"guidance_embeds": False}  # klein: no guidance input; a set value is refused
    family.predict(Recorder(), x, torch.tensor([250.0, 750.0]), {**cond, "guidance": None})
    assert "guidance" not in seen
    with pytest.raises(InputError, match="no guidance embedding .*set model.guidance=null"):
        family.predict(Recorder(), x, torch.tensor([250.0, 750.0]), cond)


@pytest.mark.parametrize("method", ["sft", "dpo", "mapo", "dcpo", "inpo"])
def test_every_method_trains_on_flux2_full_and_loads_into_the_pipeline(tmp_path, method):
    from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel

    extra = [f"method={method}"] + (["method.inversion.steps=2"] if method == "inpo" else [])
    run_dir, final = train(tmp_path / method, FLUX2 + extra)
    records = read_metrics(run_dir)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    if method in ("dpo", "dcpo", "inpo"):
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    info = json.loads((final / "training_info.json").read_text())
    assert info["family"] == "flux2" and info["prediction_type"] == "flow"
    transformer = Flux2Transformer2DModel.from_pretrained(final)
    base = Flux2KleinPipeline.from_pretrained(resolve_model_path("tiny:flux2"))
    images = _sample(Flux2KleinPipeline.from_pretrained(resolve_model_path("tiny:flux2"), transformer=transformer))
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert not np.array_equal(images, _sample(base))  # the trained weights are the ones sampling


def test_dpo_lora_on_flux2_trains_adapters_only_and_loads_with_load_lora_weights(tmp_path):
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import load_file

    run_dir, final = train(tmp_path / "lora", FLUX2 + ["method=dpo", "trainer.lora.enabled=true", "trainer.lr=1e-2",
                                                       "trainer.max_steps=3"])
    assert read_metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    keys = load_file(final / "pytorch_lora_weights.safetensors")
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)  # peft names
    modules = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in keys}
    # the diffusers FLUX.2 scripts' targets: double-stream attention to_q/k/v/out.0, the single
    # blocks' fused to_qkv_mlp_proj and their attn.to_out; not the context projections or feed-forwards
    assert modules == {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                       "transformer_blocks.0.attn.to_v", "transformer_blocks.0.attn.to_out.0",
                       "single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"}
    pipe = Flux2KleinPipeline.from_pretrained(resolve_model_path("tiny:flux2"))
    before = _sample(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft warns when file keys and config targets disagree
        pipe.load_lora_weights(final)
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    assert len(loaded) == len(keys)  # every saved matrix is in the pipeline's transformer
    trained = {k.removeprefix("transformer."): v for k, v in keys.items()}
    for name, param in loaded.items():
        key = name.replace(".default_0", "").replace(".default", "")  # the adapter's name in the pipeline
        assert torch.equal(param.detach().to(trained[key].dtype), trained[key]), name
    assert not np.array_equal(_sample(pipe), before)


def test_flux2_resume_is_bit_identical(tmp_path):
    from tests.training.helpers import final_weights

    common = FLUX2 + ["method=dpo", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    _, a = train(tmp_path / "a", common)
    train(tmp_path / "b", common + ["trainer.stop_after_steps=3"])
    _, b = train(tmp_path / "b", common + ["trainer.resume=latest"])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_flux2_runs_evaluate_through_the_families_pipeline(tmp_path):
    """A trained transformer folder and a LoRA run load through evaluation's load_pipeline."""
    from t2i_align.evaluation.sampling import load_pipeline

    _, full = train(tmp_path / "full", FLUX2 + ["method=sft"])
    _, lora = train(tmp_path / "lora", FLUX2 + ["method=sft", "trainer.lora.enabled=true"])
    for kwargs in ({"unet": str(full)}, {"lora": str(lora)}):
        pipe = load_pipeline("tiny:flux2", family="flux2", **kwargs)
        assert type(pipe).__name__ == "Flux2KleinPipeline"
        assert np.isfinite(_sample(pipe)).all()


def test_flux2_trains_from_the_latent_cache_like_from_images(tmp_path):
    """The cache stores the stacked text states and the VAE posterior, and the VAE's BatchNorm
    statistics as its latent factors (lists in cache_info.json); without random flips the two paths
    give the same first loss exactly and the same later losses to 1e-3 (batched vs single caption
    encoding differ by ~1e-7, which Adam and DPO's beta amplify, as for flux; a wrong latent or
    caption changes the loss by percents)."""
    common = FLUX2 + ["method=dpo", "data.random_flip=false"]
    run_images, _ = train(tmp_path / "images", common)
    run_cache, _ = train(tmp_path / "cache", common + ["data.cache.enabled=true", f"data.cache.dir={tmp_path / 'c'}",
                                                       "data.cache.dtype=float32", "data.cache.flip_variants=false"])
    a, b = read_metrics(run_images), read_metrics(run_cache)
    assert a[0]["loss"] == b[0]["loss"]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
    info = json.loads(next((tmp_path / "c").rglob("cache_info.json")).read_text())
    assert len(info["scaling_factor"]) == len(info["shift_factor"]) == 16


def test_dcpo_conditions_each_image_on_its_own_caption(t2i_cache):
    from t2i_align.models.loading import load_parts
    from t2i_align.training.step import build_conditioning

    parts = load_parts("tiny:flux2", with_vae=False, max_sequence_length=16)
    cond = build_conditioning(["a red circle", "a square"], ["a blue boat", "a square"], parts.text_encoders,
                              parts.tokenizers, "flux2", None, None, None, 32, "cpu")
    rows = cond["encoder_hidden_states"]
    assert rows.shape == (4, 16, 48) and not torch.equal(rows[0], rows[2]) and torch.equal(rows[1], rows[3])
    assert cond["txt_ids"].shape == (16, 4) and cond["guidance"] is None
