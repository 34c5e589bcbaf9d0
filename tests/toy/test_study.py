"""The toy study's pieces that decide its numbers: the plan, the prompt split, the mismatch data, and
the analysis (selection on validation, clustered and paired summaries, steps to half the gain),
checked on hand-made results. The study itself (66 training runs) runs in scripts/toy_study.py."""

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from t2i_align.toy.metrics import colour_of, style_of
from t2i_align.toy.mismatch import build_high_mismatch, textured_neon
from t2i_align.toy.study import GRID, GRID_FLOW, plan, run_overrides, split_prompts
from t2i_align.toy.study_report import choose_setting, steps_to_half_gain, summarise, write_report


def test_plan_covers_every_setting_seed_and_level_seed_major():
    runs = plan()
    assert len(runs) == sum(len(v) for v in GRID.values()) * 3 * 2
    assert len({r["id"] for r in runs}) == len(runs)
    seeds = [r["seed"] for r in runs]
    assert seeds == sorted(seeds)  # a study stopped early has whole seeds, not whole methods
    # the papers' beta values are in the grid
    assert {5000} <= {s.get("beta") for s in GRID["dpo"]} and {500} <= {s.get("beta") for s in GRID["dcpo"]}


def test_flow_plan_uses_the_flow_grid_and_trains_toy_sd3():
    runs = plan(("low",), seeds=(0, 1), model="toy_sd3")
    assert len(runs) == sum(len(v) for v in GRID_FLOW.values()) * 2
    betas = {s.get("beta") for s in GRID_FLOW["dpo"]}
    assert min(betas) < 5 < 5000 in betas  # below the UNet toy value, and the paper's
    overrides = run_overrides(next(r for r in runs if r["method"] == "dpo"), {}, 200, "toy_sd3")
    assert "model=toy_sd3" in overrides and "+exp=toy_dpo" in overrides


def test_validation_and_test_prompts_are_disjoint_halves_of_the_held_out_set():
    split = split_prompts()
    assert len(split["val"]) == len(split["test"]) == 18
    assert not set(split["val"]) & set(split["test"])
    assert split == split_prompts()  # fixed


def test_textured_neon_is_neon_of_the_asked_colour_with_a_textured_background():
    image = textured_neon("green", "square", "large", random.Random(0))
    assert style_of(image) == "neon" and colour_of(image) == "green"
    dark = [p for p in image.getdata() if max(p) < 51]
    assert len(dark) > 0.3 * 32 * 32
    greys = {p[0] for p in dark if p[0] == p[1] == p[2]}  # the background, away from the glow
    assert len(greys) > 5 and max(greys) <= 48  # dark, but not flat black


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_high_mismatch_replaces_only_the_chosen_images(tmp_path):
    source = tmp_path / "low"
    (source / "data").mkdir(parents=True)
    rows = [{"caption": "a red circle", "jpg_0": _png((1, 2, 3)), "jpg_1": _png((200, 200, 200)),
             "label_0": 1.0, "label_1": 0.0},
            {"caption": "blue square, small", "jpg_0": _png((210, 210, 210)), "jpg_1": _png((4, 5, 6)),
             "label_0": 0.0, "label_1": 1.0}]
    pq.write_table(pa.Table.from_pylist(rows), source / "data" / "train-00000-of-00001.parquet")
    out = build_high_mismatch(source, tmp_path / "high")
    got = pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert got[0]["jpg_1"] == rows[0]["jpg_1"] and got[1]["jpg_0"] == rows[1]["jpg_0"]  # rejected kept
    chosen = [Image.open(io.BytesIO(got[0]["jpg_0"])), Image.open(io.BytesIO(got[1]["jpg_1"]))]
    assert [colour_of(c) for c in chosen] == ["red", "blue"] and all(style_of(c) == "neon" for c in chosen)
    assert [r["caption"] for r in got] == [r["caption"] for r in rows]
    assert json.loads((out / "build_info.json").read_text())["rows"] == 2
    assert build_high_mismatch(source, out) == out  # finished: kept as it is


def _rows(values: dict, seeds=(0, 1)):
    """values: {prompt: [value per sampling seed]} for one metric; the others copied."""
    return [{"prompt": p, "seed": s, "neon": v[i], "colour": v[i], "shape": v[i]}
            for p, v in values.items() for i, s in enumerate(seeds)]


def test_summary_pools_training_seeds_clusters_by_prompt_and_pairs_with_the_base():
    base = _rows({"a": [0, 0], "b": [0, 1], "c": [0, 0]})
    run1 = {"test": _rows({"a": [1, 1], "b": [1, 1], "c": [0, 0]})}
    run2 = {"test": _rows({"a": [1, 0], "b": [1, 1], "c": [1, 0]})}
    out = summarise([run1, run2], base, "test")
    assert (out["n_prompts"], out["n_sampling_seeds"], out["n_training_seeds"]) == (3, 2, 2)
    # per-prompt rates pooled over both runs: a 3/4, b 4/4, c 1/4 -> mean 2/3
    assert out["neon"]["mean"] == pytest.approx(2 / 3)
    # t interval over the 3 prompt means (sd 0.3819, t_2 = 4.3027)
    half = 4.302653 * 0.381881 / 3 ** 0.5
    assert out["neon"]["low"] == pytest.approx(max(0.0, 2 / 3 - half), abs=1e-4)
    # paired gain per prompt: a 3/4 - 0, b 1 - 1/2, c 1/4 - 0 -> mean 1/2
    assert out["neon"]["diff"] == pytest.approx(0.5)
    assert out["neon"]["per_seed"] == pytest.approx([4 / 6, 4 / 6])
    assert out["neon"]["seed_sd"] == pytest.approx(0.0)


def test_steps_to_half_gain_interpolates_the_seed_mean_curve():
    run = {"curve": {"50": _rows({"a": [0, 0]}), "100": _rows({"a": [1, 0]}), "150": _rows({"a": [1, 1]})}}
    # gains over a base of 0: 0, 0.5, 1.0 -> half of 1.0 reached at step 100
    assert steps_to_half_gain([run], 0.0) == pytest.approx(100)
    run2 = {"curve": {"50": _rows({"a": [1, 0]}), "100": _rows({"a": [1, 1]}), "150": _rows({"a": [1, 1]})}}
    # mean curve over the two runs: 0.25, 0.75, 1.0 -> 0.5 between 50 and 100
    assert steps_to_half_gain([run, run2], 0.0) == pytest.approx(75)
    flat = {"curve": {"50": _rows({"a": [0, 0]}), "100": _rows({"a": [0, 0]})}}
    assert steps_to_half_gain([flat], 0.0) is None


def test_choice_is_the_best_validation_neon_within_the_guards_else_the_best_sum():
    def cand(neon, colour, shape):
        return {"neon": {"mean": neon}, "colour": {"mean": colour}, "shape": {"mean": shape}}

    base = cand(0.0, 0.9, 0.6)
    assert choose_setting({"hot": cand(0.9, 0.5, 0.6), "ok": cand(0.6, 0.85, 0.5)}, base) == "ok"
    assert choose_setting({"x": cand(0.9, 0.5, 0.6), "y": cand(0.3, 0.6, 0.4)}, base) == "x"


def test_report_from_results_on_disk(tmp_path):
    base = {"val": _rows({"a": [0, 0], "b": [0, 0]}), "test": _rows({"c": [0, 0], "d": [0, 1]})}
    gap = {"gap": 0.1, "chosen": 0.3, "rejected": 0.2, "pairs": 2}
    (tmp_path / "prepared.json").write_text(json.dumps(
        {"base": base, "mismatch": {"low": {"plain_caption": gap, "neon_caption": gap}}}))
    for method, neon in (("mapo", [1, 1]), ("dpo", [1, 0])):
        for seed in (0, 1):
            run = {"id": f"low-{method}-s{seed}", "level": "low", "method": method, "setting": {"lr": 1e-5},
                   "seed": seed, "val": _rows({"a": neon, "b": neon}), "test": _rows({"c": neon, "d": neon}),
                   "curve": {"200": _rows({"a": neon, "b": neon})}, "s_per_step": 0.2, "peak_rss_mb": 100.0,
                   "train_seconds": 60.0}
            (tmp_path / "runs" / run["id"]).mkdir(parents=True)
            (tmp_path / "runs" / run["id"] / "result.json").write_text(json.dumps(run))
    text = write_report(tmp_path)
    report = json.loads((tmp_path / "results.json").read_text())
    assert [c["comparison"] for c in report["comparisons"]] == ["mapo - dpo"]
    assert report["comparisons"][0]["diff"] == pytest.approx(0.5)  # 1.0 vs 0.5 on both prompts
    assert "| low | mapo | lr 1e-05 | 2 |" in text and "4 runs" in text
