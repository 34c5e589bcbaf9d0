import shutil

import pytest
import torch

from t2i_align.models.loading import load_parts
from t2i_align.models.tiny import build_tiny_pipeline


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sdxl_autodetect_and_freezing(tiny_dirs):
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    parts = load_parts("tiny:sdxl")
    assert parts.family == "sdxl" and parts.prediction_type == "epsilon"
    assert parts.source == tiny_dirs["sdxl"]
    assert isinstance(parts.noise_scheduler, DDPMScheduler)
    assert parts.noise_scheduler.config.num_train_timesteps == 1000
    te, te2 = parts.text_encoders
    assert type(te) is CLIPTextModel and type(te2) is CLIPTextModelWithProjection
    assert [t.pad_token for t in parts.tokenizers] == ["<|endoftext|>", "!"]
    for frozen in (parts.vae, te, te2):
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert parts.unet.training and all(p.requires_grad for p in parts.unet.parameters())
    assert _same_weights(parts.unet, build_tiny_pipeline("sdxl").unet)


@pytest.mark.parametrize("kind,pred", [("sd21", "v_prediction"), ("sd15", "epsilon")])
def test_sd_kinds(kind, pred, tiny_dirs):
    parts = load_parts(tiny_dirs[kind])
    assert parts.family == "sd" and parts.prediction_type == pred
    assert len(parts.text_encoders) == 1 and len(parts.tokenizers) == 1


def test_text_encoder_dtype():
    parts = load_parts("tiny:sd15", text_encoder_dtype=torch.bfloat16)
    assert next(parts.text_encoders[0].parameters()).dtype == torch.bfloat16
    assert next(parts.unet.parameters()).dtype == torch.float32


def test_vae_and_unet_overrides(tiny_dirs, tmp_path):
    base = build_tiny_pipeline("sdxl")
    with torch.no_grad():
        for p in base.vae.parameters():
            p.add_(0.5)
        for p in base.unet.parameters():
            p.mul_(0.5)
    base.vae.save_pretrained(tmp_path / "vae_only")  # config.json at the root
    base.unet.save_pretrained(tmp_path / "run" / "final" / "unet")  # a run's final/ folder
    parts = load_parts("tiny:sdxl", vae_path=str(tmp_path / "vae_only"), unet_path=str(tmp_path / "run" / "final"))
    assert _same_weights(parts.vae, base.vae) and _same_weights(parts.unet, base.unet)
    assert not parts.vae.training and parts.unet.training
    # a whole pipeline folder as the VAE source (vae/ subfolder), and a bare UNet folder
    parts = load_parts("tiny:sdxl", vae_path=tiny_dirs["sdxl"], unet_path=str(tmp_path / "run" / "final" / "unet"))
    assert _same_weights(parts.unet, base.unet)
    assert _same_weights(parts.vae, build_tiny_pipeline("sdxl").vae)


def test_bad_override_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vae/config.json"):
        load_parts("tiny:sd15", vae_path=str(tmp_path))


def test_not_a_pipeline_folder(tiny_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_parts(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["sd15"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"broken.*missing subfolder\(s\) vae"):
        load_parts(str(broken))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_parts(str(tmp_path / "nope"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a diffusers pipeline folder"):
        load_parts(str(tmp_path / "model.safetensors"), family="sd")


def test_family_errors(tiny_dirs):
    with pytest.raises(ValueError, match="unknown model family 'sd4'"):
        load_parts("tiny:sd15", family="sd4")
    with pytest.raises(FileNotFoundError, match="not a complete diffusers flux pipeline folder: missing subfolder"):
        load_parts("tiny:sd15", family="flux")
    with pytest.raises(FileNotFoundError, match="not a complete diffusers sd3 pipeline folder: missing subfolder"):
        load_parts("tiny:sd15", family="sd3")
    with pytest.raises(ValueError, match="SDXL UNet, but family='sd'"):
        load_parts(tiny_dirs["sdxl"], family="sd")
    with pytest.raises(FileNotFoundError, match="text_encoder_2"):
        load_parts(tiny_dirs["sd15"], family="sdxl")
