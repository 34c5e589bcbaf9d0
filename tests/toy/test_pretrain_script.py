"""scripts/pretrain_toy.py end to end at a few steps: writes a loadable fp16 SDXL folder with a
deterministic VAE and zeroed unused token rows, and resumes instead of starting over."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_toy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_toy"] = module
    spec.loader.exec_module(module)
    return module


def test_pretrain_toy_writes_a_loadable_model_and_resumes(tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    script = load_script()
    out, work = tmp_path / "out", tmp_path / "work"
    def args(unet_steps):
        return ["--out", str(out), "--work", str(work), "--vae-steps", "3", "--unet-steps", str(unet_steps),
                "--decay-from", "2", "--images", "256", "--batch", "4", "--report-prompts", "2"]

    script.main(args(4))
    info = json.loads((out / "pretrain_info.json").read_text())
    assert info["unet_steps"] == 4 and set(info["rates"]) == {"neon prefix", "plain prefix", "no prefix"}
    unet_file = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in unet_file.values())
    pipe = StableDiffusionXLPipeline.from_pretrained(out, dtype=torch.float32)
    assert pipe.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.std.max() < 1e-5
    table = pipe.text_encoder.get_input_embeddings().weight
    used = (table.abs().sum(-1) > 0).sum().item()
    assert 10 < used < 200  # only the toy vocabulary's rows are kept
    capsys.readouterr()
    script.main(args(6))
    printed = capsys.readouterr().out
    assert "resumed the denoiser at step 4" in printed
    assert json.loads((out / "pretrain_info.json").read_text())["unet_steps"] == 6


def test_pretrain_toy_sd3_writes_a_loadable_sd3_folder_and_resumes(tmp_path, capsys):
    """--family sd3: toy_sdxl's VAE with fitted SD3 factors, the transformer and three text
    encoders trained jointly; the folder loads as a StableDiffusion3Pipeline and the trainer's
    sd3 family reads it; a rerun resumes the transformer stage."""
    from diffusers import StableDiffusion3Pipeline

    from t2i_align.models.loading import load_parts

    script = load_script()
    out, work = tmp_path / "out", tmp_path / "work"

    def args(steps):
        return ["--family", "sd3", "--out", str(out), "--work", str(work), "--unet-steps", str(steps),
                "--decay-from", "2", "--images", "256", "--batch", "4", "--report-prompts", "2"]

    script.main(args(3))
    info = json.loads((out / "pretrain_info.json").read_text())
    assert info["family"] == "sd3" and info["transformer_steps"] == 3
    pipe = StableDiffusion3Pipeline.from_pretrained(out, dtype=torch.float32)
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
    raw = torch.load(work / "corpus_sd3.pt")["latents"]  # normalised with the same factors
    assert abs(raw.mean().item()) < 0.05 and abs(raw.std().item() - 1) < 0.05 and scale > 0 and shift is not None
    assert pipe.tokenizer_3.model_max_length == 16 and pipe.transformer.config.in_channels == 4
    parts = load_parts(str(out))
    assert parts.family == "sd3" and parts.tokenizers[2].model_max_length == 16
    capsys.readouterr()
    script.main(args(5))
    assert "resumed the transformer at step 3" in capsys.readouterr().out
    assert json.loads((out / "pretrain_info.json").read_text())["transformer_steps"] == 5
