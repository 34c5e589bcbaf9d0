"""The flux2 family's model options: model.guidance (none on klein; the guidance embedding of the
guidance-distilled FLUX.2 [dev], whose tiny model also trains and samples here), model.flow (uniform unshifted sigmas; no dynamic shift),
model.use_t5 (refused), model.max_sequence_length, the default LoRA targets on the real FLUX.2
architectures, and the pipeline-call arguments that make sampling encode as training."""

import json
import math

import numpy as np
import pytest
import torch

from t2i_align.errors import InputError
from t2i_align.families import get_family, pipeline_call_kwargs
from t2i_align.models.loading import load_parts
from tests.training.helpers import read_metrics, train

BASE = ["data=generated", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2"]
FLUX2 = ["model=tiny_flux2", "model.max_sequence_length=32"] + BASE
DEV = ["model=tiny_flux2_dev", "model.max_sequence_length=64"] + BASE  # the system message takes ~30 tokens


def test_klein_refuses_a_guidance_value_and_dev_takes_it(tmp_path):
    with pytest.raises(InputError, match="no guidance embedding .*set model.guidance=null"):
        train(tmp_path / "refused", FLUX2 + ["method=sft", "model.guidance=1.0"])
    guided = DEV + ["method=sft", "trainer.max_steps=1"]
    runs = {g: read_metrics(train(tmp_path / str(g), guided + [f"model.guidance={g}"])[0])[0]
            for g in ("1.0", "4.0", "null")}
    assert runs["1.0"]["timestep_mean"] == runs["4.0"]["timestep_mean"]
    assert runs["1.0"]["loss"] != runs["4.0"]["loss"]  # the value reaches the guidance embedding
    assert runs["null"]["loss"] == runs["1.0"]["loss"]  # null: 1.0 on a guidance-distilled transformer


def test_flow_and_guidance_options_are_checked_with_one_line_errors():
    family = get_family("flux2")
    family.check_options("fixed", {"weighting_scheme": "logit_normal", "loss_weighting": "cosmap"}, None)
    with pytest.raises(InputError, match="model.flow.dynamic_shift=true: .*set model.flow.dynamic_shift=false"):
        family.check_options("fixed", {"dynamic_shift": True})
    with pytest.raises(InputError, match=r"model.flow has unknown keys \['shift'\]"):
        family.check_options("fixed", {"shift": 3.0})
    with pytest.raises(InputError, match="model.guidance must be a finite number >= 0"):
        family.check_options("fixed", {}, -1.0)


def test_default_sigmas_are_unshifted_uniform():
    """The tiny scheduler shifts dynamically (as the pipelines need), so its training table is
    unshifted: uniform u gives sigmas with mean ~0.5, as train_dreambooth_lora_flux2*.py trains."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2i_align.models.tiny_flux2 import SCHEDULER_CONFIG

    x = torch.zeros(4000, 16, 2, 2)
    _, _, t = get_family("flux2").forward_pairs(FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), x, None,
                                                torch.Generator().manual_seed(0), "flow")
    assert abs((t / 1000).mean().item() - 0.5) < 0.02 and (t / 1000).min() < 0.01 and (t / 1000).max() > 0.99


def test_text_options_use_t5_refused_and_max_sequence_length_sets_the_length(t2i_cache):
    with pytest.raises(InputError, match="model.use_t5=false: FLUX.2 has no T5"):
        load_parts("tiny:flux2", with_vae=False, use_t5=False)
    parts = load_parts("tiny:flux2", with_vae=False)
    assert parts.tokenizers[0].model_max_length == 128  # the tiny tokenizer's, below the pipelines' 512
    text = get_family("flux2").encode_prompts(["a cat"], parts.text_encoders, parts.tokenizers)
    assert text["encoder_hidden_states"].shape[1] == 128
    short = load_parts("tiny:flux2", with_vae=False, with_text_encoders=False, max_sequence_length=8)
    assert short.tokenizers[0].model_max_length == 8 and short.text_encoders == []


def test_default_lora_targets_name_the_real_klein_and_dev_layers():
    """On the real architectures (built empty on the meta device): the double blocks' attention
    to_q/k/v/out.0 (4 each), every single block's to_qkv_mlp_proj and attn.to_out (2 each), and
    only Linear layers (a bare attn.to_out would hit the double blocks' ModuleList)."""
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=list(get_family("flux2").LORA_TARGETS))
    # klein 4B (5 + 20 blocks, 24 heads, Qwen3-4B 3 x 2560) and dev (8 + 48 blocks, Mistral 3 x 5120)
    for doubles, singles, heads, text_dim in ((5, 20, 24, 7680), (8, 48, 48, 15360)):
        with init_empty_weights():
            model = Flux2Transformer2DModel(num_layers=doubles, num_single_layers=singles, num_attention_heads=heads,
                                            joint_attention_dim=text_dim)
        hit = [(name, module) for name, module in model.named_modules() if check_target_module_exists(config, name)]
        assert all(isinstance(module, torch.nn.Linear) for _, module in hit)
        assert len(hit) == 4 * doubles + 2 * singles
        assert sum(name.endswith("attn.to_out") for name, _ in hit) == singles


def test_lora_with_the_default_targets_gets_the_only_gradients(t2i_cache):
    """With the adapters-off reference, DPO's first loss is ln 2 and only LoRA matrices receive
    gradients, the single blocks' included."""
    from t2i_align.models.lora import add_lora
    from t2i_align.models.reference import make_reference
    from t2i_align.objectives import get_objective
    from t2i_align.training.step import preference_step
    from tests.training.test_step import twin_batch

    parts = load_parts("tiny:flux2", max_sequence_length=16)
    add_lora(parts.unet, rank=4, target_modules=get_family("flux2").LORA_TARGETS)
    batch = twin_batch()
    batch["pixels_l"] = torch.flip(batch["pixels_l"], dims=[-1])
    loss, _ = preference_step(
        batch, unet=parts.unet, reference=make_reference(parts.unet, "adapters_off"), vae=parts.vae,
        text_encoders=parts.text_encoders, tokenizers=parts.tokenizers, family="flux2",
        noise_scheduler=parts.noise_scheduler, prediction_type=parts.prediction_type, objective=get_objective("dpo"),
        objective_hparams={"beta": 100.0}, generator=torch.Generator().manual_seed(1), caption_dropout=0.0,
        resolution=32, device="cpu", autocast=lambda: torch.autocast("cpu", enabled=False))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    with_grad = {n for n, p in parts.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert {n.split(".lora_B")[0] for n in with_grad if ".lora_B" in n} >= {
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out",
        "transformer_blocks.0.attn.to_q"}


def test_pipeline_call_kwargs_follow_the_family(t2i_cache):
    from t2i_align.evaluation.sampling import load_pipeline

    pipe = load_pipeline("tiny:flux2", family="flux2")
    assert pipeline_call_kwargs(pipe) == {"max_sequence_length": 128}  # the tiny tokenizer's length
    assert pipeline_call_kwargs(pipe, lora_scale=0.5)["attention_kwargs"] == {"scale": 0.5}  # FLUX.2's name
    short = load_pipeline("tiny:flux2", family="flux2", text_options={"max_sequence_length": 8})
    assert pipeline_call_kwargs(short) == {"max_sequence_length": 8}
    with pytest.raises(InputError, match="FLUX.2 has no T5"):
        pipeline_call_kwargs(load_pipeline("tiny:flux2", family="flux2", text_options={"use_t5": False}))


def test_dev_is_detected_trains_and_samples_through_flux2_pipeline(tmp_path):
    """FLUX.2 [dev]: detected as flux2, Flux2Pipeline picked from its model_index.json; DPO's first
    loss is ln 2; full and LoRA runs load through evaluation's load_pipeline and sample."""
    from diffusers import DiffusionPipeline, Flux2Pipeline

    from t2i_align.evaluation.sampling import load_pipeline
    from t2i_align.families import detect_family
    from t2i_align.models.tiny import resolve_model_path

    index = DiffusionPipeline.load_config(resolve_model_path("tiny:flux2_dev"))
    assert detect_family(index) == "flux2" and get_family("flux2").pipeline_class(index) is Flux2Pipeline
    run_dir, full = train(tmp_path / "full", DEV + ["method=dpo"])
    assert read_metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert json.loads((full / "config.json").read_text())["guidance_embeds"]  # the dev transformer trained
    _, lora = train(tmp_path / "lora", DEV + ["method=sft", "trainer.lora.enabled=true"])
    for kwargs in ({"unet": str(full)}, {"lora": str(lora)}):
        pipe = load_pipeline("tiny:flux2_dev", family="flux2", text_options={"max_sequence_length": 64}, **kwargs)
        assert type(pipe).__name__ == "Flux2Pipeline"
        assert pipeline_call_kwargs(pipe, lora_scale=1.0) == {"max_sequence_length": 64,
                                                              "attention_kwargs": {"scale": 1.0}}
        images = pipe(prompt=["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",
                      generator=torch.Generator().manual_seed(0), **pipeline_call_kwargs(pipe)).images
        assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
