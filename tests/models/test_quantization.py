"""trainer.quantize_base's pieces (models/quantization.py): the BitsAndBytesConfig it builds, the
start-up refusals, and load_parts handing the config to from_pretrained and freezing the base.
Wiring only: bitsandbytes has no CPU kernels, so nothing is really quantised here."""

import pytest
import torch

from t2i_align.errors import InputError, MissingDependencyError
from t2i_align.models import quantization
from t2i_align.models.quantization import bnb_config, check_quantize_base, compute_dtype
from tests.models.bnb_stub import fake_bitsandbytes, record_from_pretrained


def test_nf4_and_int8_configs(monkeypatch):
    from diffusers import BitsAndBytesConfig

    fake_bitsandbytes(monkeypatch)
    nf4 = bnb_config("nf4", torch.bfloat16)
    assert isinstance(nf4, BitsAndBytesConfig) and nf4.load_in_4bit and not nf4.load_in_8bit
    assert nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_compute_dtype == torch.bfloat16
    int8 = bnb_config("int8", torch.bfloat16)
    assert int8.load_in_8bit and not int8.load_in_4bit
    assert (compute_dtype("bf16"), compute_dtype("no"), compute_dtype("fp16")) == (
        torch.bfloat16, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("kind,lora,reference,installed,cuda,error,message", [
    ("fp8", True, "adapters_off", True, True, InputError, "choose null, nf4 or int8"),
    ("nf4", False, "none", True, True, InputError, "needs trainer.lora.enabled=true"),
    ("nf4", True, "copy", True, True, InputError, "needs trainer.reference=adapters_off"),
    ("int8", True, "cpu_offload", True, True, InputError, "needs trainer.reference=adapters_off"),
    ("nf4", True, "adapters_off", False, True, MissingDependencyError, "needs bitsandbytes: pip install"),
    ("nf4", True, "adapters_off", True, False, InputError, "bitsandbytes 4-bit needs a CUDA GPU"),
    ("int8", True, "none", True, False, InputError, "bitsandbytes 8-bit needs a CUDA GPU"),
])
def test_refusals(monkeypatch, kind, lora, reference, installed, cuda, error, message):
    fake_bitsandbytes(monkeypatch, installed=installed, cuda=cuda)
    with pytest.raises(error, match=message) as caught:
        check_quantize_base(kind, lora, reference)
    assert "\n" not in str(caught.value)


def test_accepted_and_old_bitsandbytes(monkeypatch):
    fake_bitsandbytes(monkeypatch)
    check_quantize_base(None, False, "copy")  # off: nothing checked
    check_quantize_base("nf4", True, "adapters_off")
    check_quantize_base("int8", True, "none")  # MaPO / SFT: no reference
    monkeypatch.setattr(quantization, "bitsandbytes_version", lambda: "0.42.0")
    with pytest.raises(MissingDependencyError, match=r"bitsandbytes >= 0.43.3 \(installed: 0.42.0\)"):
        check_quantize_base("nf4", True, "adapters_off")


def test_load_parts_passes_the_config_to_from_pretrained_and_freezes_the_base(monkeypatch, t2i_cache):
    from diffusers import BitsAndBytesConfig, SD3Transformer2DModel

    from t2i_align.models.loading import load_parts

    fake_bitsandbytes(monkeypatch)
    seen = record_from_pretrained(monkeypatch, SD3Transformer2DModel)
    parts = load_parts("tiny:sd3", with_vae=False, with_text_encoders=False, quantize_base="nf4",
                       compute_dtype=torch.bfloat16)
    (kwargs,) = seen
    config = kwargs["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig) and config.load_in_4bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs.get("dtype", kwargs.get("torch_dtype")) == torch.bfloat16  # unquantised leftovers
    unet = parts.unet
    assert unet.training and not any(p.requires_grad for p in unet.parameters())
    # prepare_model_for_kbit_training upcast the (here: all) unquantised bf16 weights to fp32
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
