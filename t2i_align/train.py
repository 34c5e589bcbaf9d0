"""Hydra entry point: python -m t2i_align.train [+exp=NAME] [group=option] [key=value ...]

Composes conf/train.yaml (model / method / data / trainer / logger / post_eval groups), writes
the run dir (outputs/train/<date>/<time> unless run_dir=... is given), runs the training recipe
and, for the toy model, evaluates base vs aligned into <run dir>/eval/ (post_eval=none skips).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from t2i_align.training.post_eval import evaluate_after_training
from t2i_align.training.recipe import run_training
from t2i_align.cli import one_line_errors, quiet_libraries


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    run_dir = HydraConfig.get().runtime.output_dir
    final = run_training(cfg, run_dir)
    if final.is_dir():  # not when stopped early (trainer.stop_after_steps)
        from accelerate import PartialState

        if PartialState().is_main_process:
            evaluate_after_training(cfg, final, final.parent)


if __name__ == "__main__":
    main()
