"""trainer.gradient_checkpointing on the transformer families (diffusers' ModelMixin
enable_gradient_checkpointing: each block's activations recomputed in the backward, non-reentrant):
on tiny_sd3 (SD3Transformer2DModel) and tiny_flux (FluxTransformer2DModel) every block goes through
torch.utils.checkpoint, the prediction and every gradient (full model, and LoRA over a frozen base,
the QLoRA case) equal the plain run's to 1e-6, and the recipe trains with the same losses and
gradient norms. Memory saved is not measured here (CPU)."""

import pytest
import torch

from t2i_align.families import get_family
from t2i_align.models.lora import add_lora
from tests.training.helpers import read_metrics, train

FAMILIES = [("sd3", "tiny:sd3"), ("flux", "tiny:flux")]


def _transformer(family: str, path: str):
    from t2i_align.models.loading import dtype_argument
    from t2i_align.models.tiny import resolve_model_path

    fam = get_family(family)
    return fam, fam.load_denoiser(resolve_model_path(path), fam.DENOISER_SUBFOLDER, **dtype_argument(torch.float32))


def _inputs(fam, model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    channels = cfg.in_channels if fam.NAME == "sd3" else cfg.in_channels // 4  # FLUX packs 2x2 patches
    noisy = torch.randn(2, channels, 8, 8, generator=g)
    text = {"encoder_hidden_states": torch.randn(2, 5, cfg.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(2, cfg.pooled_projection_dim, generator=g)}
    cond = fam.conditioning(text, original_sizes_w=None, original_sizes_l=None, crop_top_left=None,
                            with_rejected=False, resolution=32, time_ids="fixed", device="cpu",
                            guidance=1.0 if fam.NAME == "flux" else None)
    return noisy, torch.tensor([250.0, 750.0]), cond


def _blocks(model) -> int:
    return len(model.transformer_blocks) + len(getattr(model, "single_transformer_blocks", []))


def _count_checkpoints(monkeypatch) -> list:
    """Record use_reentrant of every torch.utils.checkpoint.checkpoint call (diffusers looks the
    function up at call time)."""
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


def _grads(fam, model, checkpointing: bool, calls: list):
    calls.clear()
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    model.train()
    model.zero_grad(set_to_none=True)
    noisy, t, cond = _inputs(fam, model)
    out = fam.predict(model, noisy, t, cond)
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out.detach(), grads, list(calls)


@pytest.mark.parametrize("family,path", FAMILIES)
@pytest.mark.parametrize("lora", [False, True])
def test_checkpointed_blocks_give_the_same_prediction_and_gradients(family, path, lora, t2i_cache, monkeypatch):
    fam, model = _transformer(family, path)
    if lora:
        add_lora(model, rank=4, target_modules=fam.LORA_TARGETS)
        with torch.no_grad():  # B = 0 at init would leave A without gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    calls = _count_checkpoints(monkeypatch)
    out_a, grads_a, calls_a = _grads(fam, model, False, calls)
    out_b, grads_b, calls_b = _grads(fam, model, True, calls)
    assert calls_a == [] and calls_b == [False] * _blocks(model)  # every block, non-reentrant
    torch.testing.assert_close(out_b, out_a, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert all(".lora_" in n for n in grads_a) == lora
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux"])
def test_the_recipe_trains_with_checkpointing_as_without(tmp_path, model, monkeypatch):
    common = [f"model={model}", "data=generated", "data.num_generated=8", "trainer.max_steps=2",
              "trainer.batch_size=2", "method=dpo", "trainer.lr=1e-3"]
    calls = _count_checkpoints(monkeypatch)
    plain, _ = train(tmp_path / "plain", common)
    assert calls == []
    checkpointed, _ = train(tmp_path / "ckpt", common + ["trainer.gradient_checkpointing=true"])
    assert calls  # the policy's blocks went through torch.utils.checkpoint
    a, b = read_metrics(plain), read_metrics(checkpointed)
    assert len(a) == len(b) == 2
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-6)
    assert a[1]["loss"] != a[0]["loss"]  # it trained: step 2 sees updated weights
