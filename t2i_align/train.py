"""Hydra entry point: python -m t2i_align.train [+exp=NAME] [group=option] [key=value ...]

Composes conf/train.yaml (model / method / data / trainer / logger groups), writes the run dir
(outputs/train/<date>/<time> unless run_dir=... is given) and runs the training recipe.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from t2i_align.training.recipe import run_training


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("t2i_align").setLevel(logging.INFO)
    run_training(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
