import pytest
import torch

from t2i_align.models.lora import add_lora, load_lora_trainable_state, lora_trainable_state, save_lora
from t2i_align.models.tiny import build_tiny_pipeline


def _forward(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def test_add_lora_freezes_base_and_returns_config():
    unet = build_tiny_pipeline("sd15").unet
    config = add_lora(unet, rank=4, alpha=8, dropout=0.1)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8.0, 0.1)
    assert set(config.target_modules) == {"to_k", "to_q", "to_v", "to_out.0"}
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n)
    assert add_lora(build_tiny_pipeline("sd15").unet, rank=2).lora_alpha == 2  # alpha None -> rank


def test_add_lora_starts_at_base_model(unet_inputs):
    unet = build_tiny_pipeline("sd15").unet.eval()
    inputs = unet_inputs(unet)
    base = _forward(unet, inputs)
    add_lora(unet, rank=4, alpha=2)
    torch.testing.assert_close(_forward(unet, inputs), base, rtol=0, atol=0)  # B = 0 at init


def test_add_lora_bad_arguments():
    unet = build_tiny_pipeline("sd15").unet
    with pytest.raises(ValueError, match="unknown LoRA init 'pissa'"):
        add_lora(unet, rank=4, init="pissa")
    with pytest.raises(ValueError, match="rank"):
        add_lora(unet, rank=0)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        save_lora(unet, "unused", "sd")


@pytest.mark.parametrize("kind,family", [("sdxl", "sdxl"), ("sd21", "sd")])
def test_saved_lora_reloads_in_pipeline(kind, family, tiny_dirs, unet_inputs, perturb_lora, tmp_path):
    from diffusers import DiffusionPipeline

    unet = build_tiny_pipeline(kind).unet.eval()
    inputs = unet_inputs(unet)
    base = _forward(unet, inputs)
    add_lora(unet, rank=4, alpha=16)  # alpha != rank: scale 4, lost on reload without metadata
    perturb_lora(unet)
    trained = _forward(unet, inputs)
    assert not torch.allclose(trained, base, atol=1e-3)

    path = save_lora(unet, tmp_path / "lora", family)
    assert path == tmp_path / "lora" / "pytorch_lora_weights.safetensors" and path.is_file()

    pipe = DiffusionPipeline.from_pretrained(tiny_dirs[kind])
    pipe.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(_forward(pipe.unet.eval(), inputs), trained, rtol=0, atol=1e-5)

    unet.disable_adapters()
    torch.testing.assert_close(_forward(unet, inputs), base, rtol=0, atol=0)
    unet.enable_adapters()


def test_trainable_state_round_trip(unet_inputs, perturb_lora):
    unet = build_tiny_pipeline("sd15").unet.eval()
    add_lora(unet, rank=4, alpha=8)
    perturb_lora(unet, seed=3)
    state = lora_trainable_state(unet)
    assert state and all("lora_" in k for k in state)
    inputs = unet_inputs(unet)
    expected = _forward(unet, inputs)

    other = build_tiny_pipeline("sd15").unet.eval()
    add_lora(other, rank=4, alpha=8)
    load_lora_trainable_state(other, state)
    after = lora_trainable_state(other)
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    torch.testing.assert_close(_forward(other, inputs), expected, rtol=0, atol=0)

    # the saved state is a copy: later training does not change it
    perturb_lora(unet, seed=4)
    assert all(torch.equal(lora_trainable_state(other)[k], state[k]) for k in state)


def test_load_state_mismatch_is_clear():
    unet = build_tiny_pipeline("sd15").unet
    add_lora(unet, rank=4)
    state = lora_trainable_state(unet)
    other = build_tiny_pipeline("sd15").unet
    add_lora(other, rank=2)
    with pytest.raises(ValueError, match="different rank"):
        load_lora_trainable_state(other, state)
    with pytest.raises(ValueError, match="missing key"):
        load_lora_trainable_state(unet, dict(list(state.items())[1:]))
