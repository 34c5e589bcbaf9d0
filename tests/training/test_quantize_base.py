"""trainer.quantize_base through the real recipe, on CPU: the BitsAndBytesConfig reaches the
transformer's from_pretrained, only LoRA weights train (fp32), the reference is the base with the
adapters off (DPO's first loss is ln 2), and bad settings stop the run at start-up, before the
data or any model is loaded. bitsandbytes has no CPU kernels: from_pretrained is replaced by one
that records the config and loads the plain model, so the numerics of a real 4-bit base (GPU) are
not tested here."""

import math

import pytest
import torch
from safetensors.torch import load_file

from t2i_align.errors import InputError, MissingDependencyError
from tests.models.bnb_stub import fake_bitsandbytes, record_from_pretrained
from tests.training.helpers import make_cfg, read_metrics, train

COMMON = ["data=generated", "data.num_generated=8", "trainer.max_steps=2", "trainer.batch_size=2",
          "trainer.checkpoint_every=0", "method=dpo", "trainer.lora.enabled=true", "trainer.mixed_precision=bf16",
          "trainer.lr=1e-2"]


@pytest.mark.parametrize("model,cls", [("tiny_sd3", "SD3Transformer2DModel"), ("tiny_flux", "FluxTransformer2DModel")])
def test_nf4_base_reaches_from_pretrained_and_only_lora_trains(tmp_path, monkeypatch, model, cls):
    import diffusers

    from t2i_align.training import recipe

    fake_bitsandbytes(monkeypatch)
    seen = record_from_pretrained(monkeypatch, getattr(diffusers, cls))
    loaded = []
    real_load_parts = recipe.load_parts

    def spy(*args, **kwargs):
        loaded.append(real_load_parts(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(recipe, "load_parts", spy)
    run_dir, final = train(tmp_path / model, [f"model={model}", *COMMON, "trainer.quantize_base=nf4"])

    (kwargs,) = seen
    config = kwargs["quantization_config"]
    assert isinstance(config, diffusers.BitsAndBytesConfig) and config.load_in_4bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    unet = loaded[0].unet
    trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    records = read_metrics(run_dir)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference = base, adapters off
    assert all(math.isfinite(r["loss"]) for r in records)
    keys = load_file(final / "pytorch_lora_weights.safetensors")
    assert keys and all(".lora_" in k for k in keys)


@pytest.mark.parametrize("overrides,installed,error,message", [
    (["trainer.lora.enabled=false"], True, InputError, "needs trainer.lora.enabled=true"),
    (["trainer.reference=copy"], True, InputError, "needs trainer.reference=adapters_off"),
    (["trainer.reference=cpu_offload"], True, InputError, "needs trainer.reference=adapters_off"),
    ([], False, MissingDependencyError, "needs bitsandbytes"),
    ([], True, InputError, "bitsandbytes 4-bit needs a CUDA GPU"),
])
def test_bad_settings_stop_before_data_and_models_load(tmp_path, monkeypatch, overrides, installed, error, message):
    from t2i_align.training import recipe

    fake_bitsandbytes(monkeypatch, installed=installed, cuda=False)

    def too_late(*args, **kwargs):
        raise AssertionError("data or models were loaded before the quantize_base check")

    for name in ("resolve_data_path", "load_table", "load_parts", "build_accelerator"):
        monkeypatch.setattr(recipe, name, too_late)
    cfg = make_cfg(["model=tiny_sd3", *COMMON, "trainer.quantize_base=nf4", *overrides])
    with pytest.raises(error, match=message):
        recipe.run_training(cfg, tmp_path / "run")
