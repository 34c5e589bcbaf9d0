"""Cluster launch files: accelerate configs (DDP, ZeRO-2, FSDP) parse as accelerate reads them,
the Slurm launcher composes, and a -m sweep really runs through submitit (local executor)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.training.helpers import CONF_DIR, TINY_CLI

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "scripts" / "launch" / "accelerate"


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))  # unknown keys would raise here
    assert str(config.distributed_type).endswith(kind)
    assert config.mixed_precision == "bf16" and config.num_processes == 8 and not config.use_cpu
    if name == "zero2":
        assert config.deepspeed_config["zero_stage"] == 2
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
    if name == "fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"] is True
        from diffusers.models.attention import BasicTransformerBlock  # the wrapped classes exist
        from diffusers.models.resnet import ResnetBlock2D

        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert wrapped == [BasicTransformerBlock.__name__, ResnetBlock2D.__name__]


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
