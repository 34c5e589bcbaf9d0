"""One micro-batch on tiny models: which caption conditions which image, and the SDXL extras."""

import pytest
import torch

from t2i_align.families import get_family
from t2i_align.models.loading import load_parts
from t2i_align.models.reference import make_reference
from t2i_align.objectives import get_objective
from t2i_align.training.step import build_conditioning, preference_step


def twin_batch(resolution=32):
    """Two pairs whose chosen and rejected images are identical but whose captions differ."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, resolution, resolution, generator=g) * 2 - 1
    return {"pixels_w": pixels, "pixels_l": pixels.clone(), "captions": ["a red circle", "a square"],
            "captions_w": ["a vivid red circle", "a vivid square"],
            "captions_l": ["a dull grey circle", "a dull square"],
            "original_sizes_w": torch.tensor([[64, 64], [48, 80]]),
            "original_sizes_l": torch.tensor([[64, 64], [48, 80]]),
            "crop_top_left": torch.tensor([[0, 0], [0, 8]]), "indices": torch.tensor([0, 1]),
            "num_skipped": 0, "size": 2}


def run_step(parts, per_image_captions, monkeypatch, objective="dpo"):
    """preference_step with the posterior mean as latents (identical images -> identical
    latents) and a spy on the per-sample errors handed to the objective."""
    import t2i_align.training.step as step_module

    obj = get_objective(objective)
    reference = make_reference(parts.unet, "copy") if obj.needs_reference else None
    captured = {}
    real = step_module.compute_objective

    def spy(objective, hparams, model_err_w, model_err_l=None, ref_err_w=None, ref_err_l=None):
        captured.update(w=model_err_w.detach(), l=model_err_l.detach())
        return real(objective, hparams, model_err_w, model_err_l, ref_err_w, ref_err_l)

    monkeypatch.setattr(step_module, "compute_objective", spy)
    monkeypatch.setattr(get_family(parts.family), "encode_latents", lambda vae, pixels, generator: (
        vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor))
    loss, _ = preference_step(
        twin_batch(), unet=parts.unet, reference=reference, vae=parts.vae,
        text_encoders=parts.text_encoders, tokenizers=parts.tokenizers, family=parts.family,
        noise_scheduler=parts.noise_scheduler, prediction_type=parts.prediction_type,
        objective=obj, objective_hparams={"beta": 5000.0}, generator=torch.Generator().manual_seed(1),
        caption_dropout=0.0, resolution=32, device="cpu",
        autocast=lambda: torch.autocast("cpu", enabled=False), per_image_captions=per_image_captions)
    return loss, captured


@pytest.mark.parametrize("kind", ["sdxl", "sd21"])
def test_shared_prompt_gives_equal_errors_for_identical_images(kind, monkeypatch):
    parts = load_parts(f"tiny:{kind}")
    loss, errs = run_step(parts, False, monkeypatch)
    torch.testing.assert_close(errs["w"], errs["l"], rtol=0, atol=0)
    assert loss.item() == pytest.approx(0.6931, abs=1e-4)


@pytest.mark.parametrize("kind", ["sdxl", "sd21"])
def test_per_image_captions_reach_the_unet(kind, monkeypatch):
    parts = load_parts(f"tiny:{kind}")
    _, errs = run_step(parts, True, monkeypatch)
    assert (errs["w"] - errs["l"]).abs().max() > 1e-7


def test_sdxl_time_ids_fixed_by_default_or_each_images_original_size_and_the_crop():
    """Default: (res, res, 0, 0, res, res) for every image (the DPO / DCPO / InPO releases, SDXL at
    inference); time_ids="original": each image's own original size and the pair's crop corner."""
    parts = load_parts("tiny:sdxl")
    batch = twin_batch()
    batch["original_sizes_l"] = torch.tensor([[100, 120], [48, 80]])
    args = (batch["captions"], batch["captions"], parts.text_encoders, parts.tokenizers, "sdxl",
            batch["original_sizes_w"], batch["original_sizes_l"], batch["crop_top_left"], 32, "cpu")
    fixed = build_conditioning(*args)["added_cond_kwargs"]["time_ids"]
    assert fixed.tolist() == [[32, 32, 0, 0, 32, 32]] * 4
    cond = build_conditioning(*args, time_ids="original")
    time_ids = cond["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[64, 64, 0, 0, 32, 32], [48, 80, 0, 8, 32, 32],
                                 [100, 120, 0, 0, 32, 32], [48, 80, 0, 8, 32, 32]]
    assert cond["encoder_hidden_states"].shape[0] == 4
    assert torch.equal(cond["encoder_hidden_states"][:2], cond["encoder_hidden_states"][2:])
    with pytest.raises(ValueError, match="time_ids mode 'real'"):
        build_conditioning(*args, time_ids="real")
