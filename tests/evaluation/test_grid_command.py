"""python -m t2i_align.grid: size and labels, and reuse of an evaluation's image cache."""

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from t2i_align.grid import make_grid
from tests.training.helpers import CONF_DIR, train


def grid_cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("grid", overrides=overrides)


def test_grid_base_vs_lora_from_the_cache(tmp_path):
    _, final = train(tmp_path / "train", ["method=mapo", "trainer.lora.enabled=true", "trainer.lr=5e-2"])
    cache = tmp_path / "cache"
    overrides = [f"cache_dir={cache}", "num_prompts=3", "eval.steps=2", "score_with=pickscore",
                 f"models=[{{name: mapo, lora: {final}}}]"]
    out = make_grid(grid_cfg(overrides), tmp_path / "g1")
    grid = Image.open(out)
    # 200 px label column + 2 models x 256 px; 32 px header + 3 rows x (256 + 20 px score line)
    assert grid.size == (200 + 2 * 256, 32 + 3 * (256 + 20))
    px = np.asarray(grid.convert("L"))
    assert (px[:32, 200:] < 100).any() and (px[32:, :200] < 100).any()  # header and prompt labels drawn
    stamps = sorted(p.stat().st_mtime_ns for p in cache.rglob("*.png"))
    assert len(stamps) == 6
    make_grid(grid_cfg(overrides), tmp_path / "g2")
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*.png")) == stamps  # nothing regenerated
