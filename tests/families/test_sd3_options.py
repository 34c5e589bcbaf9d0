"""The sd3 family's model options: model.flow (sigma sampling, loss weighting), model.use_t5,
model.max_sequence_length, the family's default LoRA targets, and the pipeline-call arguments
that make sampling encode prompts as training does."""

import math

import pytest
import torch

from t2i_align.errors import InputError
from t2i_align.families import get_family, pipeline_call_kwargs
from t2i_align.models.loading import load_parts
from t2i_align.models.prompt_encoding_sd3 import AbsentT5
from tests.families.test_families import UNET_FAMILIES
from tests.training.helpers import read_metrics, train

SD3 = ["model=tiny_sd3", "data=generated", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2"]


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def test_flow_options_are_checked_with_one_line_errors():
    family = get_family("sd3")
    family.check_options("fixed", {"weighting_scheme": "mode", "loss_weighting": "cosmap"})
    with pytest.raises(InputError, match=r"model.flow has unknown keys \['shift'\]"):
        family.check_options("fixed", {"shift": 3.0})
    with pytest.raises(InputError, match="model.flow.weighting_scheme='normal'"):
        family.check_options("fixed", {"weighting_scheme": "normal"})
    with pytest.raises(InputError, match="model.flow.loss_weighting='sigma'"):
        family.check_options("fixed", {"loss_weighting": "sigma"})
    with pytest.raises(InputError, match="logit_std must be positive"):
        family.check_options("fixed", {"logit_std": 0})
    for name in UNET_FAMILIES:
        with pytest.raises(InputError, match="model.flow .*weighting_scheme.* applies to rectified-flow families"):
            get_family(name).check_options("fixed", {"weighting_scheme": "uniform"})


def test_weighting_scheme_changes_the_sigmas_drawn():
    """uniform u indexes the shift-3 table evenly (mean sigma = the table's mean, ~0.79 with shift
    3); logit_normal(0, 1) is symmetric around u = 0.5, whose shifted sigma is 0.75; the table runs
    from sigma 1 down (as diffusers indexes it), so a logit mean of +2 pushes sigma toward 0."""
    family, scheduler = get_family("sd3"), _scheduler()
    x = torch.zeros(4000, 1, 1, 1)

    def sigmas(flow):
        _, _, t = family.forward_pairs(scheduler, x, None, torch.Generator().manual_seed(0), "flow", flow=flow)
        return t / 1000

    uniform = sigmas({"weighting_scheme": "uniform"})
    assert uniform.mean().item() == pytest.approx(scheduler.sigmas[:-1].mean().item(), abs=0.01)
    assert sigmas({}).median().item() == pytest.approx(0.75, abs=0.02)
    assert sigmas({"logit_mean": 2.0}).median().item() < 0.35
    assert not torch.equal(sigmas({"weighting_scheme": "mode"}), uniform)


def test_loss_weighting_values_by_hand():
    """sigma 0.5 (timestep 500): sigma_sqrt = 0.5^-2 = 4; cosmap = 2 / (pi (1 - 1 + 0.5)) = 4 / pi;
    sigma 0.25: sigma_sqrt 16, cosmap 2 / (pi (1 - 0.5 + 0.125)) = 3.2 / pi."""
    family = get_family("sd3")
    t = torch.tensor([500.0, 250.0])
    assert family.error_weights(t, {}) is None
    torch.testing.assert_close(family.error_weights(t, {"loss_weighting": "sigma_sqrt"}), torch.tensor([4.0, 16.0]))
    torch.testing.assert_close(family.error_weights(t, {"loss_weighting": "cosmap"}),
                               torch.tensor([4 / math.pi, 3.2 / math.pi]))
    for name in UNET_FAMILIES:
        assert get_family(name).error_weights(t) is None


def test_loss_weighting_scales_the_logged_errors(tmp_path):
    """SFT's loss is the mean velocity error; with sigma_sqrt every row's error is multiplied by
    sigma^-2 >= 1, so the first loss grows by exactly the mean weight of its rows (same draws)."""
    plain, _ = train(tmp_path / "plain", SD3 + ["method=sft", "trainer.max_steps=1"])
    weighted, _ = train(tmp_path / "w", SD3 + ["method=sft", "trainer.max_steps=1", "model.flow.loss_weighting=sigma_sqrt"])
    a, b = read_metrics(plain)[0], read_metrics(weighted)[0]
    assert a["timestep_mean"] == b["timestep_mean"]
    assert b["loss"] > a["loss"] * 1.0001


def test_training_without_t5_feeds_zeros_as_the_pipeline_does(tmp_path, t2i_cache):
    parts = load_parts("tiny:sd3", use_t5=False, max_sequence_length=8)
    t5 = parts.text_encoders[2]
    assert isinstance(t5, AbsentT5) and t5.width == parts.unet.config.joint_attention_dim and t5.length == 8
    assert parts.tokenizers[2] is None
    cond = get_family("sd3").encode_prompts(["a red circle"], parts.text_encoders, parts.tokenizers)
    clip_length = parts.tokenizers[0].model_max_length
    states = cond["encoder_hidden_states"]
    assert states.shape == (1, clip_length + 8, parts.unet.config.joint_attention_dim)
    assert torch.count_nonzero(states[:, clip_length:]) == 0 and torch.count_nonzero(states[:, :clip_length]) > 0
    run_dir, _ = train(tmp_path / "no_t5", SD3 + ["method=dpo", "model.use_t5=false"])
    assert read_metrics(run_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_max_sequence_length_sets_the_t5_tokens(t2i_cache):
    family = get_family("sd3")
    parts = load_parts("tiny:sd3", max_sequence_length=12, with_vae=False)
    assert parts.tokenizers[2].model_max_length == 12
    cond = family.encode_prompts(["a red circle", "x"], parts.text_encoders, parts.tokenizers)
    assert cond["encoder_hidden_states"].shape[1] == parts.tokenizers[0].model_max_length + 12
    with pytest.raises(InputError, match="1 to 512 T5 tokens"):
        load_parts("tiny:sd3", max_sequence_length=600, with_vae=False)
    with pytest.raises(InputError, match="apply to families with a T5 encoder"):
        load_parts("tiny:sdxl", max_sequence_length=77, with_vae=False)


def test_sd3_lora_defaults_to_the_diffusers_sd3_targets(tmp_path):
    from safetensors.torch import load_file

    _, final = train(tmp_path / "lora", SD3 + ["method=sft", "trainer.lora.enabled=true", "trainer.max_steps=1"])
    keys = load_file(final / "pytorch_lora_weights.safetensors")
    for name in ("attn.to_q", "attn.add_q_proj", "attn.to_add_out", "attn2.to_q"):
        assert any(f".{name}.lora" in k for k in keys), name
    assert set(get_family("sdxl").LORA_TARGETS) == {"to_q", "to_k", "to_v", "to_out.0"}


def test_pipeline_call_kwargs_follow_the_family(t2i_cache):
    from t2i_align.evaluation.sampling import load_pipeline

    sd3 = load_pipeline("tiny:sd3", family="sd3")
    assert pipeline_call_kwargs(sd3) == {"max_sequence_length": 256}
    assert pipeline_call_kwargs(sd3, lora_scale=0.5)["joint_attention_kwargs"] == {"scale": 0.5}
    sdxl = load_pipeline("tiny:sdxl")
    assert pipeline_call_kwargs(sdxl) == {}
    assert pipeline_call_kwargs(sdxl, lora_scale=0.5) == {"cross_attention_kwargs": {"scale": 0.5}}


def test_lora_under_bf16_keeps_the_frozen_base_in_bf16_and_lora_in_fp32(tmp_path):
    """trainer.lora.base_dtype=auto (default): as diffusers' LoRA scripts, the frozen transformer
    sits in the mixed-precision dtype (half the memory) and the LoRA master weights in fp32; DPO
    still starts at ln 2 (the adapters-off reference is the same bf16 base)."""
    from t2i_align.models.lora import add_lora, cast_frozen_base
    from t2i_align.models.tiny_sd3 import build_tiny_sd3_pipeline

    transformer = build_tiny_sd3_pipeline().transformer
    add_lora(transformer, rank=4, target_modules=get_family("sd3").LORA_TARGETS)
    cast_frozen_base(transformer, torch.bfloat16)
    dtypes = {(p.requires_grad, p.dtype) for p in transformer.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert all(b.dtype == torch.bfloat16 for b in transformer.buffers() if b.is_floating_point())
    run_dir, _ = train(tmp_path / "bf16", SD3 + ["method=dpo", "trainer.lora.enabled=true",
                                                 "trainer.mixed_precision=bf16"])
    records = read_metrics(run_dir)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-3) and all(math.isfinite(r["loss"]) for r in records)
