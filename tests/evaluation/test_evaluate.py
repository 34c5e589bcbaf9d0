"""python -m t2i_align.evaluate on tiny models: outputs, cache reuse, base vs LoRA win rates."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from PIL import Image

from t2i_align.evaluate import run_evaluation
from t2i_align.evaluation.sampling import cache_folders
from tests.training.helpers import CONF_DIR, train


def eval_cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=overrides)


def test_default_tiny_evaluation_writes_everything_and_reuses_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cfg = eval_cfg([f"cache_dir={cache}", "eval.num_prompts=3", "eval.steps=2"])
    rows = run_evaluation(cfg, tmp_path / "run1")
    for name in ("results.csv", "results.json", "results.md", "report.html", "grid.png", "config.yaml"):
        assert (tmp_path / "run1" / name).is_file(), name
    assert {(r["model"], r["reward"]) for r in rows} == {("base", "pickscore"), ("base", "clip_score")}
    assert all(r["n"] == 6 and r["ci_low"] <= r["mean"] <= r["ci_high"] for r in rows)
    grid = Image.open(tmp_path / "run1" / "grid.png")
    assert grid.size[1] > 3 * 200  # 3 prompt rows of 256 px cells
    html = (tmp_path / "run1" / "report.html").read_text()
    assert html.count("<img src='") == 1 + 6  # grid + one image per (prompt, seed)

    images = sorted(cache.rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in images]
    run_evaluation(cfg, tmp_path / "run2")
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.png"))] == stamps, "cached images were regenerated"
    assert json.loads((tmp_path / "run2" / "results.json").read_text()) == json.loads(
        (tmp_path / "run1" / "results.json").read_text())


def test_base_vs_lora_on_tiny_sd21(tmp_path):
    _, final = train(tmp_path / "train", ["model=tiny_sd21", "method=mapo", "trainer.lora.enabled=true",
                                          "trainer.lr=5e-2"])
    cfg = eval_cfg(["model=tiny_sd21", f"cache_dir={tmp_path / 'cache'}", "eval.num_prompts=2", "eval.steps=2",
                    f"models=[{{name: mapo, lora: {final}}}]"])
    rows = run_evaluation(cfg, tmp_path / "eval")
    lora_rows = [r for r in rows if r["model"] == "mapo"]
    assert len(lora_rows) == 2
    for r in lora_rows:
        assert 0 <= r["win_low"] <= r["win_rate"] <= r["win_high"] <= 1
    assert all(r["win_rate"] is None for r in rows if r["model"] == "base")
    assert len(cache_folders(Path(tmp_path / "cache"), "mapo")) == 1
