import pytest
import torch

from t2i_align.models.lora import add_lora
from t2i_align.models.reference import make_reference
from t2i_align.models.tiny import build_tiny_pipeline


def _policy(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


@pytest.fixture()
def sdxl_unet():
    return build_tiny_pipeline("sdxl").unet.eval()


def test_none():
    assert make_reference(torch.nn.Linear(1, 1), "none") is None


def test_adapters_off_equals_copy_made_before_lora(sdxl_unet, unet_inputs, perturb_lora):
    unet = sdxl_unet
    inputs = unet_inputs(unet)
    copy_ref = make_reference(unet, "copy")
    add_lora(unet, rank=4, alpha=8)
    perturb_lora(unet)
    off_ref = make_reference(unet, "adapters_off")
    assert off_ref.unet is unet  # no second copy of the weights

    ref_out = off_ref(**inputs)
    assert ref_out.dtype == torch.float32 and ref_out.shape == inputs["sample"].shape
    torch.testing.assert_close(ref_out, copy_ref(**inputs), rtol=0, atol=1e-6)
    # adapters are enabled again after the call: the policy differs from the base model
    assert not torch.allclose(_policy(unet, inputs), ref_out, atol=1e-3)


class RecordingWrapper(torch.nn.Module):
    """Stands in for an engine's wrapper of the UNet (FSDP's root unit): delegates and counts calls."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_adapters_off_runs_through_the_wrapper_when_told(sdxl_unet, unet_inputs, perturb_lora):
    """Under FSDP the recipe routes the adapters-off reference through the prepared wrapper; the
    adapters are still switched on the plain module, so the output is the base model's."""
    unet = sdxl_unet
    inputs = unet_inputs(unet)
    copy_ref = make_reference(unet, "copy")
    add_lora(unet, rank=4, alpha=8)
    perturb_lora(unet)
    wrapper = RecordingWrapper(unet)
    off_ref = make_reference(unet, "adapters_off")
    off_ref.run_through(wrapper)
    out = off_ref(**inputs)
    assert wrapper.calls == 1
    torch.testing.assert_close(out, copy_ref(**inputs), rtol=0, atol=1e-6)
    assert not torch.allclose(_policy(unet, inputs), out, atol=1e-3)  # adapters back on


def test_cpu_offloaded_copy_equals_copy_and_keeps_weights_off_the_device(sdxl_unet, unet_inputs):
    """The offloaded reference streams weights through accelerate's hooks; its output equals the
    on-device copy's, and its parameters stay in CPU RAM (here: on the meta device behind hooks)."""
    unet = sdxl_unet
    inputs = unet_inputs(unet)
    copy_ref = make_reference(unet, "copy")
    offloaded = make_reference(unet, "cpu_offload", device="cpu")
    assert offloaded.unet is not unet and offloaded.unet is not copy_ref.unet
    assert all(p.device.type in ("cpu", "meta") for p in offloaded.unet.parameters())
    out = offloaded(**inputs)
    assert out.dtype == torch.float32 and out.shape == inputs["sample"].shape
    torch.testing.assert_close(out, copy_ref(**inputs), rtol=0, atol=0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)  # training the policy must not move the offloaded reference
    torch.testing.assert_close(offloaded(**inputs), out, rtol=0, atol=0)
    add_lora(unet, rank=4)
    with pytest.raises(ValueError, match="'cpu_offload' got a UNet with LoRA adapters"):
        make_reference(unet, "cpu_offload")


def test_adapters_re_enabled_after_error(sdxl_unet, unet_inputs, perturb_lora):
    unet = sdxl_unet
    inputs = unet_inputs(unet)
    add_lora(unet, rank=4)
    perturb_lora(unet)
    expected = _policy(unet, inputs)
    ref = make_reference(unet, "adapters_off")
    with pytest.raises(ValueError, match="text_embeds"):  # SDXL UNet without its pooled embedding
        ref(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], added_cond_kwargs={})
    torch.testing.assert_close(_policy(unet, inputs), expected, rtol=0, atol=0)


def test_copy_is_frozen_independent_and_no_grad(unet_inputs):
    unet = build_tiny_pipeline("sd15").unet.train()
    inputs = unet_inputs(unet)
    ref = make_reference(unet, "copy")
    before = ref(**inputs)
    assert not ref.unet.training and not any(p.requires_grad for p in ref.unet.parameters())
    assert all(p.requires_grad for p in unet.parameters())  # the policy is untouched
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)  # "training" the policy must not move the reference
    after = ref(**inputs)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not after.requires_grad


def test_copy_in_bfloat16(unet_inputs):
    unet = build_tiny_pipeline("sdxl").unet.eval()
    inputs = unet_inputs(unet)
    ref = make_reference(unet, "copy", dtype=torch.bfloat16)
    assert next(ref.unet.parameters()).dtype == torch.bfloat16
    assert next(unet.parameters()).dtype == torch.float32
    out = ref(**inputs)
    assert out.dtype == torch.float32 and out.shape == inputs["sample"].shape
    torch.testing.assert_close(out, _policy(unet, inputs), rtol=0.1, atol=0.1)


def test_strategy_errors():
    unet = build_tiny_pipeline("sd15").unet
    with pytest.raises(ValueError, match="needs a UNet with LoRA adapters"):
        make_reference(unet, "adapters_off")
    with pytest.raises(ValueError, match="none, copy, cpu_offload, adapters_off"):
        make_reference(unet, "ema")
    add_lora(unet, rank=2)
    with pytest.raises(ValueError, match="use 'adapters_off'"):
        make_reference(unet, "copy")


def test_low_precision_copy_keeps_float_timesteps_in_float32():
    """A bf16 reference copy gets the latents in bf16 but the flow families' float timesteps (and
    FLUX's guidance / ids) in float32: bf16 would round SD3's 748.3 to 748, another timestep than
    the policy sees under autocast."""
    import torch

    from t2i_align.models.reference import CopyReference

    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, hidden_states, timestep, guidance=None, return_dict=False):
            seen.update(hidden=hidden_states.dtype, timestep=timestep.dtype, guidance=guidance.dtype,
                        value=timestep.item())
            return (hidden_states * self.weight,)

    reference = CopyReference(Recorder(), dtype=torch.bfloat16)
    out = reference(hidden_states=torch.ones(1, 2), timestep=torch.tensor(748.3), guidance=torch.tensor(3.5))
    assert seen["hidden"] == torch.bfloat16 and out.dtype == torch.float32
    assert seen["timestep"] == torch.float32 and seen["guidance"] == torch.float32
    assert abs(seen["value"] - 748.3) < 1e-3
