"""Hydra entry point: python -m t2i_align.build_dataset +dataset=NAME [model=...] [output_dir=...]

Builds MaPO's Pick-Style / Pick-Safety sets (or any prefix pair) with the base model, or adds
DCPO's per-image captions to a Pick-a-Pic-schema dataset, as parquet shards in the Pick-a-Pic
schema with a dataset card. Resumable (rerun with the same output_dir), deterministic, and
multi-GPU with `accelerate launch -m t2i_align.build_dataset ...` (shards spread over processes).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from t2i_align.data.builders.build import build, check_enough_pairs  # noqa: F401
from t2i_align.cli import one_line_errors, quiet_libraries


@hydra.main(config_path="../conf", config_name="build_dataset", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    build(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
