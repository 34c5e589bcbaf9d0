"""A few steps of each method on tiny_sdxl and tiny_sd21, full fine-tuning and LoRA."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel

from t2i_align.models.loading import load_parts
from tests.training.helpers import final_weights, read_metrics, train

CASES = [(method, model, lora) for method in ("dpo", "mapo", "sft", "dcpo", "inpo")
         for model in ("tiny_sdxl", "tiny_sd21") for lora in (False, True)]


@pytest.mark.parametrize("method,model,lora", CASES)
def test_method_trains_and_logs(tmp_path, method, model, lora):
    run_dir, final = train(tmp_path / "run", [f"method={method}", f"model={model}",
                                              f"trainer.lora.enabled={lora}", "trainer.lr=1e-3"])
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["lr"] == pytest.approx(1e-3)
        assert r["skipped_rows"] == 0
    if method in ("dpo", "dcpo", "inpo"):
        # policy == reference at step 1: the loss is -log sigmoid(0) = ln 2 exactly
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert records[0]["model_err_w"] == pytest.approx(records[0]["ref_err_w"], abs=1e-6)
        assert {"implicit_acc", "ref_err_l", "model_err_l"} <= records[0].keys()
    if method == "mapo":
        assert {"margin_term", "f_w", "f_l", "model_err_l"} <= records[0].keys()
        assert "ref_err_w" not in records[0]
    assert (run_dir / "config.yaml").is_file()

    weights = final_weights(final)
    if lora:
        assert weights and all("lora" in k for k in weights)
        assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)
    else:
        base = load_parts(f"tiny:{model.split('_')[1]}").unet.state_dict()
        trained = UNet2DConditionModel.from_pretrained(final).state_dict()
        changed = sum(not torch.equal(base[k], trained[k]) for k in base)
        assert changed > len(base) // 2, "full fine-tuning should change most tensors"


def test_bf16_mixed_precision_with_gradient_checkpointing(tmp_path):
    """bf16 autocast (CPU here, GPU for users), checkpointed activations, a bf16 frozen copy as
    reference: DPO still starts at ln 2 and trains finite; trainable weights stay fp32."""
    run_dir, final = train(tmp_path / "run", ["method=dpo", "trainer.mixed_precision=bf16",
                                              "trainer.gradient_checkpointing=true"])
    records = read_metrics(run_dir)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(v.dtype == torch.float32 for v in final_weights(final).values())


def test_gradient_accumulation_steps_once_per_accumulated_batch(tmp_path):
    run_dir, _ = train(tmp_path / "run", ["method=sft", "trainer.grad_accum=3",
                                          "trainer.lr_scheduler=linear", "trainer.max_steps=3"])
    records = read_metrics(run_dir)
    # linear decay from 1e-4 over 3 optimizer steps: the schedule advanced once per step
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["lr"] for r in records] == pytest.approx([1e-4 * 2 / 3, 1e-4 / 3, 0.0])


def test_inpo_inverter_and_evaluation_level_options(tmp_path):
    """The frozen reference inverts by default; method.inversion.model=policy (the release) and
    evaluate_at=source (the release's level convention) are wired through: all start at ln 2
    (policy == reference at step 1), and each option changes what is trained on."""
    runs = {}
    for name, extra in [("default", []), ("policy", ["method.inversion.model=policy"]),
                        ("source", ["method.inversion.evaluate_at=source"])]:
        run_dir, _ = train(tmp_path / name, ["method=inpo", "method.inversion.steps=3", "model=tiny_sd21",
                                             "trainer.lr=1e-3", "trainer.max_steps=3", *extra])
        runs[name] = read_metrics(run_dir)
        assert runs[name][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert all(math.isfinite(r["loss"]) for r in runs[name])
    # step 1: the policy is the reference, so inverting with either gives the same x_t
    assert runs["policy"][0]["model_err_w"] == pytest.approx(runs["default"][0]["model_err_w"], abs=1e-7)
    # later steps: the policy's own inversions differ from the reference's
    assert runs["policy"][2]["ref_err_l"] != pytest.approx(runs["default"][2]["ref_err_l"], abs=1e-7)
    # the source level gives other inverted latents from step 1 on
    assert runs["source"][0]["model_err_w"] != pytest.approx(runs["default"][0]["model_err_w"], abs=1e-7)


def test_inpo_rejects_an_unknown_inverter_at_start_up(tmp_path):
    with pytest.raises(ValueError, match="method.inversion.evaluate_at='middle'"):
        train(tmp_path / "bad", ["method=inpo", "method.inversion.evaluate_at=middle"])
    with pytest.raises(ValueError, match="method.inversion.model='ema'"):
        train(tmp_path / "bad2", ["method=inpo", "method.inversion.model=ema"])
