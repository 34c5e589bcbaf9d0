"""Smoke tests of scripts/bench_step.py, in-process: DPO and InPO with LoRA on the tiny UNet, cache rows and
reference strategies, and the flow-matching (sd3 family) rows on the tiny SD3 transformer."""

import importlib.util
import json
import math
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_step_tiny_dpo_in_process(tmp_path, capsys):
    bench = load_bench()
    out_json = tmp_path / "bench.json"
    rows = bench.main(["--models", "tiny", "--methods", "dpo,inpo", "--tunings", "lora", "--steps", "1", "--warmup", "1",
                       "--sources", "images", "--cache-pairs", "0", "--no-subprocess", "--json", str(out_json)])
    printed = capsys.readouterr().out

    assert [(r["method"], r["reference"]) for r in rows] == [("dpo", "adapters_off"), ("inpo", "adapters_off")]
    for row in rows:
        assert row["step_s"] > 0 and row["bare_s"] > 0 and row["ratio"] > 0 and row["encode_s"] > 0
        assert row["latent"] == [16, 16]
        assert set(row["step_phases"]) == {"forward", "backward", "clip", "optimizer"}

    table_rows = [line for line in printed.splitlines() if line.startswith("| tiny | dpo |")]
    assert len(table_rows) == 2  # main table + phase table
    cells = [c.strip() for c in table_rows[0].strip("|").split("|")]
    assert cells[:5] == ["tiny", "dpo", "lora", "adapters_off", "images"]
    assert cells[5] == "-" and float(cells[8].rstrip("x")) > 0  # options, ratio columns
    assert "Machine: torch" in printed

    # InPO's inversion is timed on its own and is part of its bare compute
    dpo, inpo = rows
    assert dpo["inversion_s"] == 0 and inpo["inversion_s"] > 0
    assert "inversion" in inpo["bare_phases"]
    assert any(line.startswith("| tiny | inpo |") for line in printed.splitlines())

    saved = json.loads(out_json.read_text())
    assert len(saved["rows"]) == 2 and saved["rows"][0]["ratio"] > 0


def test_bench_step_cache_rows_reference_strategies_and_build_throughput(tmp_path, capsys):
    bench = load_bench()
    rows = bench.main(["--models", "tiny", "--methods", "dpo", "--tunings", "full", "--steps", "1", "--warmup", "1",
                       "--sources", "images,cache", "--references", "copy,cpu_offload", "--cache-pairs", "4",
                       "--no-subprocess", "--json", str(tmp_path / "b.json")])
    printed = capsys.readouterr().out
    assert [(r["source"], r["reference"]) for r in rows] == [
        ("images", "copy"), ("images", "cpu_offload"), ("cache", "copy"), ("cache", "cpu_offload")]
    for row in rows:
        assert row["step_s"] > 0 and row["bare_s"] > 0 and row["latent"] == [16, 16]
    images, cache = rows[0], rows[2]
    assert cache["encode_s"] < images["encode_s"]  # no VAE / text encoder in the cached step
    build = json.loads((tmp_path / "b.json").read_text())["cache_build"]
    assert len(build) == 1 and build[0]["pairs"] == 4 and build[0]["pairs_per_s"] > 0
    assert build[0]["bytes_per_pair"] > 4 * 16 * 16 * 2 * 2  # fp16 mean + std of two 4x16x16 latents, at least
    assert "| tiny | dpo | full | cpu_offload | cache | - |" in printed
    assert "Latent cache build" in printed and "| tiny | 4 |" in printed


def test_bench_step_flow_rows_tiny_sd3(tmp_path, capsys):
    """The sd3 family (SD3Transformer2DModel, rectified flow): DPO full (frozen copy) and LoRA
    (adapters off, the family's default LoRA targets) from the latent cache, plus the cache build."""
    bench = load_bench()
    rows = bench.main(["--models", "tiny_sd3", "--methods", "dpo", "--tunings", "full,lora", "--steps", "1",
                       "--warmup", "0", "--sources", "cache", "--cache-pairs", "2", "--no-subprocess",
                       "--json", str(tmp_path / "b.json")])
    printed = capsys.readouterr().out
    assert [(r["model"], r["tuning"], r["reference"]) for r in rows] == [
        ("tiny_sd3", "full", "copy"), ("tiny_sd3", "lora", "adapters_off")]
    for row in rows:
        assert row["family"] == "sd3" and row["denoiser"] == "SD3Transformer2DModel"
        assert math.isfinite(row["step_s"]) and math.isfinite(row["bare_s"]) and row["step_s"] > 0 and row["bare_s"] > 0
        assert row["ratio"] > 0 and row["latent"] == [16, 16]
    full, lora = rows
    assert 0 < lora["trainable_params_m"] < full["trainable_params_m"] == full["unet_params_m"]
    assert "| tiny_sd3 | dpo | lora | adapters_off | cache | - |" in printed
    assert "SD3Transformer2DModel" in printed  # the machine line names the denoiser
    build = json.loads((tmp_path / "b.json").read_text())["cache_build"]
    assert build[0]["model"] == "tiny_sd3" and build[0]["pairs"] == 2 and build[0]["pairs_per_s"] > 0


def test_bench_step_flow_images_row_and_missing_toy_weights(tmp_path, monkeypatch):
    """An sd3 row on the images source (VAE + CLIP / T5 every step) through run_row; and a missing
    pretrained toy_sd3 is refused before any row runs, naming the folder."""
    import pytest

    from t2i_align.errors import InputNotFoundError

    bench = load_bench()
    row = bench.run_row("tiny_sd3", "sft", "full", pairs=1, steps=1, warmup=0, device_name="cpu", source="images")
    assert row["reference"] == "none" and row["encode_s"] > 0 and math.isfinite(row["step_s"]) and row["ratio"] > 0

    import t2i_align.toy.model as toy_model

    monkeypatch.setattr(toy_model, "TOY_WEIGHTS", tmp_path / "no_weights")
    with pytest.raises(InputNotFoundError, match="no_weights"):
        bench.main(["--models", "toy_sd3", "--methods", "sft", "--no-subprocess"])
