"""scripts/memory_table.py: its meta-device counts equal the real tiny models' parameters, buffers,
Linear weights and LoRA parameters (peft's own add_lora), its byte arithmetic matches hand-computed
numbers on a two-tensor model, and the published configs give the models' stated sizes."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "memory_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("memory_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_table"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family,path", [("sd3", "tiny:sd3"), ("flux", "tiny:flux"), ("sdxl", "tiny:sdxl")])
def test_meta_counts_equal_the_instantiated_tiny_model(family, path, t2i_cache):
    from t2i_align.families import get_family
    from t2i_align.models.loading import dtype_argument
    from t2i_align.models.lora import add_lora
    from t2i_align.models.tiny import resolve_model_path

    mt = load_script()
    fam = get_family(family)
    real = fam.load_denoiser(resolve_model_path(path), fam.DENOISER_SUBFOLDER, **dtype_argument(torch.float32))
    meta = mt.meta_model(type(real).__name__, dict(real.config))
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    counts = mt.counts_of(meta, fam.LORA_TARGETS)
    assert counts.total == sum(p.numel() for p in real.parameters())
    assert counts.buffers == sum(b.numel() for b in real.buffers() if b.is_floating_point())
    assert counts.linear_weights == sum(m.weight.numel() for m in real.modules() if isinstance(m, torch.nn.Linear))
    for rank in (4, 16):
        model = fam.load_denoiser(resolve_model_path(path), fam.DENOISER_SUBFOLDER, **dtype_argument(torch.float32))
        add_lora(model, rank=rank, target_modules=fam.LORA_TARGETS)
        assert counts.lora_params(rank) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_bytes_by_hand_on_a_two_tensor_model():
    """One Linear 64 -> 128 (weight 128 x 64 = 8192, bias 128) targeted by LoRA, 10 buffer values:
    P = 8320 parameters, L = 8192 of them in the Linear weight."""
    mt = load_script()
    c = mt.Counts(shapes=[(128, 64), (128,)], linears=[("blocks.0.attn.to_q", 64, 128)], targets=("to_q",), buffers=10)
    assert (c.total, c.linear_weights, c.lora_params(16)) == (8320, 8192, 16 * 64 + 128 * 16)
    full = mt.setup_bytes(c, mt.Setup("", None, "fp32", "adamw", "copy"))
    # weights 4 x 8320 + 4 x 10, grads 4 x 8320, AdamW 8 x 8320, bf16 copy 2 x (8320 + 10)
    assert full == {"weights": 33320, "lora": 0, "grads": 33280, "optimizer": 66560, "reference": 16660,
                    "total": 149820}
    qlora = mt.setup_bytes(c, mt.Setup("", 16, "nf4", "adamw", "adapters_off"))
    # nf4: 8192 / 2 + 4 x (8192 / 64 absmax) + bias 4 x 128 + buffers 2 x 10; LoRA T = 3072 in fp32
    assert qlora == {"weights": 4096 + 512 + 512 + 20, "lora": 4 * 3072, "grads": 4 * 3072,
                     "optimizer": 8 * 3072, "reference": 0, "total": 5140 + 16 * 3072}
    int8 = mt.base_bytes(c, "int8")
    assert int8 == 8192 + 4 * 128 + 4 * 128 + 2 * 10  # int8 weight, one fp32 scale per output row
    # 8-bit AdamW: the 8192-value weight 2 x 8192 + 2 x 4 x 32 absmax; the 128-value bias stays 32-bit (8 x 128)
    assert mt.optimizer_bytes(c.shapes, "adamw8bit") == 16384 + 256 + 1024
    # Adafactor: 4 x (128 rows + 64 columns) for the matrix, 4 x 128 for the bias
    assert mt.optimizer_bytes(c.shapes, "adafactor") == 768 + 512


def test_the_published_configs_give_the_stated_sizes(capsys):
    mt = load_script()
    sizes = {}
    for model in mt.MODELS:
        counts = mt.counts_of(mt.meta_model(model.cls, model.config), model.lora_targets())
        sizes[model.name] = (counts.total + counts.buffers) / 1e9
        assert counts.lora_params(16) > 0
    # stated: SDXL UNet 2.57B, SD3.5-medium 2.5B and SD3.5-large 8.1B (with the position table),
    # FLUX.1-dev 11.9B, FLUX.2-klein "4B"
    stated = {"SDXL UNet": (2.57, 0.01), "SD3.5-medium": (2.5, 0.05), "SD3.5-large": (8.1, 0.1),
              "FLUX.1-dev": (11.9, 0.01), "FLUX.2-klein-4B": (4.0, 0.15)}
    for name, (size, tolerance) in stated.items():
        assert math.isclose(sizes[name], size, abs_tol=tolerance), (name, sizes[name])
    mt.main([])
    out = capsys.readouterr().out
    assert out.count("| QLoRA r16, nf4 base") == 1 and all(m.name in out for m in mt.MODELS)
