"""Smoke test of scripts/bench_step.py: DPO and InPO with LoRA on the tiny model, in-process, 1 warmup + 1 timed step."""

import importlib.util
import json
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
