"""final/ under sharded engines (FSDP / DeepSpeed): written from the state dict accelerate gathers,
not from the main process's own module, whose weights are only its shards there.

No GPU or second process here, so a stand-in accelerator plays the engine: its module's weights
are zeroed (what a rank's partial view looks like) and get_state_dict returns the whole weights.
"""

import json

import pytest
import torch
from accelerate.utils import DistributedType
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file

from t2i_align.families import get_family
from t2i_align.models.lora import add_lora
from t2i_align.training.final import save_final


class StandInAccelerator:
    """The parts of Accelerator that save_final uses, for one process of a given engine type."""

    def __init__(self, distributed_type, whole_state):
        self.distributed_type = distributed_type
        self.whole_state = whole_state
        self.is_main_process = True
        self.gathers = 0

    def get_state_dict(self, model):
        self.gathers += 1
        return self.whole_state

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        pass


def tiny_transformer(tiny_dirs):
    return SD3Transformer2DModel.from_pretrained(tiny_dirs["sd3"], subfolder="transformer")


def whole_then_partial(model, names=None):
    """The model's state (cloned) as the engine would gather it; then the module's own tensors
    (those named, or all) are zeroed, as a rank holding only its shards would see them."""
    whole = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for k, p in model.named_parameters():
            if names is None or k in names:
                p.zero_()
    return whole


@pytest.mark.parametrize("engine", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_full_model_final_is_the_gathered_state_and_loads(tmp_path, tiny_dirs, engine):
    model = tiny_transformer(tiny_dirs)
    whole = whole_then_partial(model)
    accelerator = StandInAccelerator(engine, whole)
    final = save_final(accelerator, model, use_lora=False, family="sd3", run_dir=tmp_path, info={"steps": 3})
    assert accelerator.gathers == 1
    loaded = SD3Transformer2DModel.from_pretrained(final)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, whole[k], rtol=0, atol=0, msg=k)
    assert any(v.abs().sum() > 0 for v in loaded.state_dict().values())
    assert json.loads((final / "training_info.json").read_text()) == {"steps": 3}
    assert not (tmp_path / ".tmp-final").exists()


def test_unsharded_final_saves_the_module_and_gathers_nothing(tmp_path, tiny_dirs):
    model = tiny_transformer(tiny_dirs)
    accelerator = StandInAccelerator(DistributedType.NO, whole_state={})
    final = save_final(accelerator, model, use_lora=False, family="sd3", run_dir=tmp_path, info={})
    assert accelerator.gathers == 0
    loaded = SD3Transformer2DModel.from_pretrained(final)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0, msg=k)


def test_lora_final_under_fsdp_writes_the_gathered_adapter_weights(tmp_path, tiny_dirs, perturb_lora):
    model = tiny_transformer(tiny_dirs)
    add_lora(model, rank=4, alpha=8, target_modules=list(get_family("sd3").LORA_TARGETS))
    perturb_lora(model)
    lora_names = {k for k, _ in model.named_parameters() if "lora_" in k}
    whole = whole_then_partial(model, lora_names)
    accelerator = StandInAccelerator(DistributedType.FSDP, whole)
    final = save_final(accelerator, model, use_lora=True, family="sd3", run_dir=tmp_path, info={})
    saved = load_file(str(final / "pytorch_lora_weights.safetensors"))
    expected = {"transformer." + k.replace(".default.", "."): v for k, v in whole.items() if k in lora_names}
    assert set(saved) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0, msg=k)
        assert saved[k].abs().sum() > 0
