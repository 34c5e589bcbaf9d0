"""Cluster launch files: accelerate configs (DDP, ZeRO-2 / 3, FSDP for the UNet, SD3 and FLUX.1)
parse as accelerate reads them, the FSDP block classes they name exist in diffusers and in the tiny
models (accelerate's own FSDP plugin finds them), the Slurm launcher composes, and a -m sweep really
runs through submitit (local executor). None of the multi-GPU configs is run here (no GPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.training.helpers import CONF_DIR, TINY_CLI

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "scripts" / "launch" / "accelerate"


# FSDP config -> (diffusers module holding the wrapped classes, the tiny model whose denoiser has them)
FSDP_BLOCKS = {"fsdp": ("diffusers.models.attention", "tiny:sdxl"),
               "fsdp_sd3": ("diffusers.models.transformers.transformer_sd3", "tiny:sd3"),
               "fsdp_flux": ("diffusers.models.transformers.transformer_flux", "tiny:flux")}


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"),
                                       ("fsdp", "FSDP"), ("fsdp_sd3", "FSDP"), ("fsdp_flux", "FSDP")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))  # unknown keys would raise here
    assert str(config.distributed_type).endswith(kind)
    assert config.mixed_precision == "bf16" and config.num_processes == 8 and not config.use_cpu
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
    if name.startswith("fsdp"):
        assert config.fsdp_config["fsdp_use_orig_params"] is True
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if name == "fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"] is True
        from diffusers.models.attention import BasicTransformerBlock  # the wrapped classes exist
        from diffusers.models.resnet import ResnetBlock2D

        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert wrapped == [BasicTransformerBlock.__name__, ResnetBlock2D.__name__]


def _wrapped_classes(name: str) -> list[str]:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    return config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")


@pytest.mark.parametrize("name", ["fsdp_sd3", "fsdp_flux"])
def test_fsdp_block_classes_are_the_transformers_blocks(name, t2i_cache):
    """The named classes import from diffusers, are the model class's _no_split_modules, and are
    the classes the tiny model's denoiser really contains (what FSDP's wrap policy matches)."""
    import importlib

    from diffusers import DiffusionPipeline

    from t2i_align.models.tiny import resolve_model_path

    module, tiny = FSDP_BLOCKS[name]
    classes = [getattr(importlib.import_module(module), cls) for cls in _wrapped_classes(name)]
    denoiser = DiffusionPipeline.from_pretrained(resolve_model_path(tiny)).transformer
    assert sorted(type(denoiser)._no_split_modules) == sorted(c.__name__ for c in classes)
    found = {type(m) for m in denoiser.modules()}
    assert set(classes) <= found
    for cls in classes:
        assert any(isinstance(m, cls) for m in denoiser.modules())


@pytest.mark.parametrize("name", sorted(FSDP_BLOCKS))
def test_accelerates_fsdp_plugin_finds_the_blocks_in_the_tiny_models(name, monkeypatch, t2i_cache):
    """accelerate launch turns the config into FSDP_* variables, the FSDP plugin reads them and its
    wrap policy looks each class name up in the model (raising if one is missing). sync_module_states
    (and cpu_ram_efficient_loading, which forces it) is switched off for the check only: building
    the plugin with it asks for a GPU."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from diffusers import DiffusionPipeline

    from t2i_align.models.tiny import resolve_model_path

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE / f"{name}.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.transformer_cls_names_to_wrap == _wrapped_classes(name) and plugin.use_orig_params
    pipe = DiffusionPipeline.from_pretrained(resolve_model_path(FSDP_BLOCKS[name][1]))
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    plugin.set_auto_wrap_policy(denoiser)
    wrapped = plugin.auto_wrap_policy.keywords["transformer_layer_cls"]
    assert {c.__name__ for c in wrapped} == set(_wrapped_classes(name))


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
def test_slurm_launcher_composes(config_name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")
    assert launcher.max_num_timeout == 3


def test_training_sweep_runs_through_submitit(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "t2i_align.train", "-m", "hydra/launcher=local", *TINY_CLI,
           "trainer.max_steps=1", "trainer.batch_size=2", "data.num_generated=8", "trainer.checkpoint_every=0",
           "trainer.lr=1e-4,2e-4", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "final" / "diffusion_pytorch_model.safetensors").is_file()
    lrs = sorted(float(line.split(":")[1]) for job in ("0", "1")
                 for line in (sweep / job / "config.yaml").read_text().splitlines() if line.startswith("  lr:"))
    assert lrs == [1e-4, 2e-4]
    assert list((sweep / ".submitit").iterdir())  # submitit's job folders: the launcher really ran
