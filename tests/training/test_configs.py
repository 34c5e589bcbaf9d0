"""Every config option and every experiment composes, with the papers' defaults."""

from pathlib import Path

import pytest

from tests.training.helpers import CONF_DIR, make_cfg

EXPS = sorted(p.stem for p in (Path(CONF_DIR) / "exp").glob("*.yaml"))


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_groups_hold_the_required_options():
    assert {"sdxl", "sd21", "sd15", "tiny_sdxl", "tiny_sd21"} <= set(options("model"))
    assert {"dpo", "mapo", "sft"} <= set(options("method"))
    assert {"pickapic_v2", "pick_style_cartoon", "pick_style_pixel_art", "pick_safety", "jsonl",
            "generated"} <= set(options("data"))
    assert {"none", "wandb", "tensorboard"} <= set(options("logger"))
    assert {"mapo_pickstyle", "mapo_picksafety", "dpo_pickapic", "sft_pickapic"} <= set(EXPS)


@pytest.mark.parametrize("exp", EXPS)
def test_every_experiment_composes_and_cites_its_source(exp):
    text = (Path(CONF_DIR) / "exp" / f"{exp}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "arXiv" in text or "Source" in text
    cfg = make_cfg([f"+exp={exp}"])
    assert cfg.trainer.max_steps > 0 and cfg.method.objective in ("dpo", "mapo", "sft")


@pytest.mark.parametrize("group", ["model", "method", "data", "logger"])
def test_every_option_composes(group):
    for option in options(group):
        cfg = make_cfg([f"{group}={option}"])
        assert cfg[group] is not None


def test_paper_defaults():
    assert make_cfg(["method=dpo"]).method.loss.beta == 5000
    mapo = make_cfg(["method=mapo"]).method.loss
    assert (mapo.beta, mapo.snr_value, mapo.num_train_timesteps) == (0.1, 0.5, None)
    dpo = make_cfg(["+exp=dpo_pickapic"])
    assert dpo.model.name == "sdxl" and dpo.trainer.optimizer == "adafactor"
    assert dpo.trainer.lr * dpo.trainer.batch_size * dpo.trainer.grad_accum * 16 == pytest.approx(2.048e-5)
    assert dpo.trainer.caption_dropout == 0.2 and dpo.trainer.warmup_steps == 200
    style = make_cfg(["+exp=mapo_pickstyle"])
    assert style.data.path == "mapo-t2i/pick-style-cartoon" and style.trainer.lr == 1e-5
    assert make_cfg(["model=sd21"]).model.resolution == 768
    sd15 = make_cfg(["+exp=dpo_sd15"])
    assert sd15.model.name == "sd15" and sd15.trainer.optimizer == "adamw" and sd15.trainer.warmup_steps == 500
    assert sd15.method.loss.beta == 5000 and sd15.trainer.caption_dropout == 0.2
    assert sd15.trainer.lr * sd15.trainer.grad_accum * 16 == pytest.approx(2.048e-5)
    assert make_cfg(["+exp=inpo_sdxl"]).trainer.optimizer == "adafactor"
    assert make_cfg(["+exp=inpo_sd15"]).trainer.optimizer == "adamw"
    # SDXL add_time_ids: fixed (res, res, 0, 0, res, res) unless asked for the original sizes
    assert make_cfg(["+exp=dpo_pickapic"]).model.time_ids == "fixed"


def test_every_preset_says_how_many_processes_its_batch_assumes():
    conf = Path(__file__).resolve().parents[2] / "conf" / "exp"
    for path in conf.glob("*.yaml"):
        if path.stem.startswith("toy_"):
            continue  # one CPU process
        assert "Processes:" in path.read_text(), path.name


def test_dcpo_and_inpo_defaults():
    dcpo = make_cfg(["+exp=dcpo_sd21"])
    assert dcpo.method.objective == "dpo" and dcpo.method.captions == "per_image"
    assert dcpo.method.loss.beta == 500 and dcpo.model.name == "sd21" and dcpo.trainer.warmup_steps == 500
    assert list(dcpo.data.image_caption_columns) == ["caption_0", "caption_1"]
    inpo = make_cfg(["+exp=inpo_sdxl"])
    assert inpo.method.noising == "inversion" and inpo.method.inversion.steps == 10
    assert inpo.method.inversion.eta == 0.1 and inpo.method.inversion.model == "reference"
    assert inpo.method.inversion.evaluate_at == "destination"
    assert inpo.method.loss.beta == 5000 and inpo.trainer.max_steps == 400
    assert inpo.trainer.lr * inpo.trainer.grad_accum * 8 == pytest.approx(1.024e-5)
    assert make_cfg(["+exp=inpo_sd15"]).method.loss.beta == 2000


def test_sd35_presets():
    """SD3.5-medium presets: the family, the cited numbers (README: SD3 / SD3.5)."""
    lora = make_cfg(["+exp=dpo_sd35_lora"])
    assert lora.model.family == "sd3" and lora.model.resolution == 512 and lora.method.loss.beta == 100
    assert lora.trainer.lora.enabled and (lora.trainer.lora.rank, lora.trainer.lora.alpha) == (32, 64)
    assert lora.trainer.lr == 1e-5 and lora.trainer.mixed_precision == "bf16"
    assert lora.model.flow.weighting_scheme == "logit_normal" and lora.model.flow.logit_std == 1.0
    full = make_cfg(["+exp=dpo_sd35"])
    assert not full.trainer.lora.enabled and full.method.loss.beta == 100
    mapo = make_cfg(["+exp=mapo_sd35"])
    assert mapo.method.objective == "mapo" and mapo.method.loss.beta == 0.1 and mapo.trainer.lr == 1e-5
    assert mapo.data.path == "mapo-t2i/pick-style-cartoon" and mapo.model.resolution == 1024
    assert make_cfg(["+exp=mapo_sd35_lora"]).trainer.lora.rank == 32


def test_flux_presets():
    """FLUX presets: the families, the cited numbers, QLoRA on top of the LoRA preset."""
    lora = make_cfg(["+exp=dpo_flux1_lora"])
    assert lora.model.family == "flux" and lora.model.guidance == 1.0 and lora.method.loss.beta == 2
    assert lora.trainer.lora.enabled and lora.trainer.quantize_base is None and lora.trainer.lr == 1e-5
    qlora = make_cfg(["+exp=dpo_flux1_qlora"])
    assert qlora.trainer.quantize_base == "nf4" and qlora.trainer.lora.rank == lora.trainer.lora.rank
    mapo = make_cfg(["+exp=mapo_flux1_lora"])
    assert mapo.method.objective == "mapo" and mapo.trainer.lr == 1e-4 and mapo.model.flow.weighting_scheme == "uniform"
    klein = make_cfg(["+exp=dpo_flux2_klein_lora"])
    assert klein.model.family == "flux2" and klein.model.guidance is None and klein.method.loss.beta == 2
