"""python -m t2i_align.build_dataset on the tiny SDXL model: presets, resume, determinism, reward
filter, the dataset card, loading with datasets, and training on the result without conversion."""

import io
import json

import datasets
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

import t2i_align.data.builders.prefix_pairs as prefix_pairs
from t2i_align.build_dataset import build
from t2i_align.data.builders.prompt_source import build_prompts
from t2i_align.data.builders.shards import run_shards, shard_stats
from tests.data.test_double_caption import blip_dir, t5_dir  # noqa: F401  (tiny captioner / paraphraser fixtures)
from tests.training.helpers import CONF_DIR, FAST, make_cfg

FAST_BUILD = ["model=tiny_sdxl", "dataset.steps=2", "dataset.batch_size=2"]


def build_cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("build_dataset", overrides=overrides)


def rows_of(out_dir):
    files = sorted((out_dir / "data").glob("train-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize("preset,chosen,rejected", [
    ("pick_style_cartoon", "Disney style animated image. ", "Realistic 8k image. "),
    ("pick_style_pixel_art", "Pixel art style image. ", "Realistic 8k image. "),
    ("pick_safety", "", "Sexual, nudity, +19 image. "),
])
def test_presets_write_pickapic_schema_with_provenance(tmp_path, preset, chosen, rejected):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\nA  red fox in the SNOW\na nude statue\na blue boat\n")
    out = build(build_cfg([f"+dataset={preset}", *FAST_BUILD, f"dataset.prompts={prompts}",
                           f"output_dir={tmp_path / 'out'}"]), tmp_path)
    rows = rows_of(out)
    expected = ["a red fox in the snow", "a blue boat"] if preset == "pick_safety" else [
        "a red fox in the snow", "a nude statue", "a blue boat"]  # near-duplicate dropped; safety drops "nude"
    assert [r["caption"] for r in rows] == expected
    for r in rows:
        assert (r["label_0"], r["label_1"]) == (1.0, 0.0)
        assert (r["chosen_prefix"], r["rejected_prefix"]) == (chosen, rejected)
        assert r["chosen_prompt"] == chosen + r["caption"] and r["rejected_prompt"] == rejected + r["caption"]
        assert r["model"] == "tiny:sdxl" and r["steps"] == 2 and r["resolution"] == 32
        for key in ("jpg_0", "jpg_1"):
            image = Image.open(io.BytesIO(r[key]))
            assert image.format == "JPEG" and image.size == (32, 32)
        assert r["jpg_0"] != r["jpg_1"]
    card = (out / "README.md").read_text()
    assert "path: data/train-*" in card and repr(chosen)[1:-1] in card and f"`{len(expected)}`" in card
    info = json.loads((out / "build_info.json").read_text())
    assert info["rows"] == info["planned"] == len(expected)


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    common = ["+dataset=pick_style_cartoon", *FAST_BUILD, "dataset.num_prompts=5", "dataset.shard_size=2"]
    full = build(build_cfg(common + [f"output_dir={tmp_path / 'full'}"]), tmp_path)
    assert len(list((full / "data").glob("*.parquet"))) == 3

    real, calls = prefix_pairs.prefix_pair_rows, []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(prefix_pairs, "prefix_pair_rows", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build(build_cfg(common + [f"output_dir={tmp_path / 'resumed'}"]), tmp_path)
    done = sorted((tmp_path / "resumed" / "data").glob("*.parquet"))
    assert [p.name for p in done] == ["train-00000-of-00003.parquet"]  # no half-written shard left
    stamp = done[0].stat().st_mtime_ns
    monkeypatch.setattr(prefix_pairs, "prefix_pair_rows", real)
    resumed = build(build_cfg(common + [f"output_dir={tmp_path / 'resumed'}"]), tmp_path)
    assert done[0].stat().st_mtime_ns == stamp, "a finished shard was rebuilt"
    assert rows_of(resumed) == rows_of(full)  # same pairs, same image bytes, nothing lost or doubled

    with pytest.raises(ValueError, match=r"another plan \(differs in: \['chosen_prefix'\]\)"):
        build(build_cfg(common + [f"output_dir={tmp_path / 'resumed'}", "dataset.chosen_prefix=Other. "]), tmp_path)


def test_reward_filter_keeps_pairs_above_the_margin(tmp_path):
    common = ["+dataset=pick_style_cartoon", *FAST_BUILD, "dataset.num_prompts=6", "dataset.filter.reward=pickscore",
              "+dataset.filter.args.model_path=tiny:clip", "+dataset.filter.args.processor_path=tiny:clip"]
    everything = rows_of(build(build_cfg(common + ["dataset.filter.margin=-1e9", f"output_dir={tmp_path / 'a'}"]), tmp_path))
    margins = sorted(r["chosen_score"] - r["rejected_score"] for r in everything)
    cut = margins[3]
    out = build(build_cfg(common + [f"dataset.filter.margin={cut}", f"output_dir={tmp_path / 'b'}"]), tmp_path)
    kept = rows_of(out)
    assert [r["caption"] for r in kept] == [r["caption"] for r in everything
                                            if r["chosen_score"] - r["rejected_score"] >= cut]
    assert 0 < len(kept) < len(everything)
    assert shard_stats(out) == {"shards": 1, "planned": 6, "rows": len(kept)}
    assert "dropped by the filter" in (out / "README.md").read_text()


def test_built_set_loads_with_datasets_and_trains_without_conversion(tmp_path):
    out = build(build_cfg(["+dataset=pick_style_pixel_art", *FAST_BUILD, "dataset.num_prompts=4",
                           f"output_dir={tmp_path / 'ds'}", "save_to_disk=true"]), tmp_path)
    loaded = datasets.load_dataset(str(out), split="train")
    assert loaded.num_rows == 4 and loaded[0]["chosen_prefix"] == "Pixel art style image. "
    assert datasets.load_from_disk(str(out / "save_to_disk")).num_rows == 4

    from t2i_align.training.recipe import run_training

    final = run_training(make_cfg(FAST + ["data=pick_style_pixel_art", f"data.path={out}", "data.num_workers=0",
                                          "trainer.lora.enabled=true"]), tmp_path / "train")
    assert (final / "pytorch_lora_weights.safetensors").is_file()
    info = json.loads((final / "training_info.json").read_text())
    assert info["steps"] == 2 and info["skipped_rows"] == 0


def test_shards_are_split_across_processes_without_duplicates(tmp_path):
    import pyarrow as pa

    schema = pa.schema([("i", pa.int64())])

    def make_rows(start, end):
        return [{"i": i} for i in range(start, end)]

    counts = [run_shards(tmp_path, 7, 2, make_rows, schema, rank=r, world_size=2) for r in (0, 1)]
    assert [c["made"] for c in counts] == [2, 2]  # shards 0, 2 and 1, 3
    values = sorted(row["i"] for f in (tmp_path / "data").glob("*.parquet") for row in pq.read_table(f).to_pylist())
    assert values == list(range(7))
    assert run_shards(tmp_path, 7, 2, make_rows, schema) == {"made": 0, "skipped": 4}


def test_prompt_source_dedupes_filters_and_limits(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\nA   CAT\nnsfw +18 thing\nsexy cat\nsexyness of cats\nok\n")
    prompts, counts = build_prompts(str(path), exclude_words=["+18", "sexy"], min_words=2)
    assert prompts == ["a cat", "sexyness of cats"]  # whole words only: "sexyness" stays
    assert counts == {"read": 6, "duplicates": 1, "filtered_words": 2, "too_short": 1, "kept": 2}
    assert build_prompts(str(path), limit=1)[0] == ["a cat"]
    with pytest.raises(ValueError, match="no prompts left"):
        build_prompts(str(path), exclude_words=["a", "cat", "cats", "ok", "thing"])


@pytest.mark.parametrize("strategy", ["perturbation", "hybrid"])
def test_double_caption_build_adds_per_image_captions_and_trains_dcpo(tmp_path, blip_dir, t5_dir, strategy):
    from t2i_align.data.generated import generated_pairs_table

    source = generated_pairs_table(num_pairs=20, seed=1, size=32)
    source.save_to_disk(str(tmp_path / "source"))
    non_ties = [r for r in source if r["label_0"] != 0.5]
    out = build(build_cfg([
        "+dataset=pick_double_caption", f"dataset.input={tmp_path / 'source'}", f"dataset.strategy={strategy}",
        "dataset.level=strong", f"dataset.captioner.path={blip_dir}", f"dataset.paraphraser.path={t5_dir}",
        "dataset.paraphraser.tokenizer_path=null", "dataset.shard_size=8", "dataset.batch_size=4",
        f"output_dir={tmp_path / 'out'}"]), tmp_path)
    rows = rows_of(out)
    assert len(rows) == len(non_ties) and 0 < len(rows) < 20  # ties dropped
    for row, src in zip(rows, non_ties):
        assert (row["caption"], row["jpg_0"], row["label_0"]) == (src["caption"], src["jpg_0"], src["label_0"])
        assert isinstance(row["caption_0"], str) and isinstance(row["caption_1"], str)
        assert row["caption_strategy"] == strategy and row["caption_level"] == "strong"
        if strategy == "perturbation":  # the chosen image keeps the prompt, in image order
            chosen_caption = row["caption_0"] if row["label_0"] == 1.0 else row["caption_1"]
            assert chosen_caption == row["caption"]
    assert "caption_0" in (out / "README.md").read_text()

    from t2i_align.training.recipe import run_training

    final = run_training(make_cfg(FAST + ["method=dcpo", "data=pick_double_caption", f"data.path={out}",
                                          "data.num_workers=0"]), tmp_path / "train")
    assert json.loads((final / "training_info.json").read_text())["method"] == "dcpo"


def test_two_process_build_equals_one_process_build(tmp_path):
    """torchrun with 2 CPU processes (gloo): shards spread over the processes, same dataset."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    common = ["+dataset=pick_style_cartoon", *FAST_BUILD, "dataset.num_prompts=4", "dataset.shard_size=1"]
    single = build(build_cfg(common + [f"output_dir={tmp_path / 'single'}"]), tmp_path)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "t2i_align.build_dataset",
         *common, f"output_dir={tmp_path / 'multi'}", f"run_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1: 2 shards made" in result.stderr + result.stdout
    multi_rows, single_rows = rows_of(tmp_path / "multi"), rows_of(single)
    drop = ("jpg_0", "jpg_1")
    assert [{k: v for k, v in r.items() if k not in drop} for r in multi_rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in single_rows]
    # pixels equal up to float noise (1 vs 2 threads change low bits, JPEG re-quantises them)
    import numpy as np

    for a, b in zip(multi_rows, single_rows):
        for key in drop:
            diff = np.abs(np.asarray(Image.open(io.BytesIO(a[key])), dtype=float)
                          - np.asarray(Image.open(io.BytesIO(b[key])), dtype=float))
            assert diff.mean() < 1.0, diff.mean()


def test_data_build_makes_the_preset_once_and_keys_the_cache(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from t2i_align.data.builders.ensure import ensure_built, load_preset

    monkeypatch.setenv("T2I_ALIGN_CACHE", str(tmp_path / "cache"))
    assert load_preset("pick_safety").rejected_prefix == "Sexual, nudity, +19 image. "
    assert load_preset("pick_safety").shard_size == 250  # inherited from prefix_pair
    model = OmegaConf.load(f"{CONF_DIR}/model/tiny_sdxl.yaml")
    overrides = ["dataset.num_prompts=2", "dataset.steps=2", "dataset.image_format=png"]
    first = ensure_built("pick_style_cartoon", model, overrides)
    assert first.parent == tmp_path / "cache" / "datasets" and len(rows_of(first)) == 2
    stamp = (first / "build_info.json").stat().st_mtime_ns
    assert ensure_built("pick_style_cartoon", model, overrides) == first
    assert (first / "build_info.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = ensure_built("pick_style_cartoon", model, overrides[:1] + ["dataset.steps=3", "dataset.image_format=png"])
    assert other != first and rows_of(other)[0]["steps"] == 3
    with pytest.raises(ValueError, match="unknown dataset preset 'nope'"):
        load_preset("nope")


def test_build_keeping_no_pair_fails_and_is_not_recorded_as_finished(tmp_path):
    """A random tiny model never passes the toy style filter: the build says how many pairs were
    generated, what removed them and what to do, writes no build_info.json, and a rerun (the
    same folder, shards kept) fails the same way at once instead of training on nothing."""
    from t2i_align.errors import InputError

    cfg = build_cfg(["+dataset=toy_pickstyle", *FAST_BUILD, "dataset.num_prompts=2", "dataset.pairs_per_prompt=1",
                     f"output_dir={tmp_path / 'out'}"])
    message = (r"kept 0 of 2 generated pairs, fewer than the 1 needed; the reward filter removed 2: "
               r"dataset.filter.reward=toy_style keeps a pair only when the chosen image beats the rejected one by "
               r"dataset.filter.margin=1.0\. It is not recorded as a finished dataset\. To fix: .*dataset.filter.reward=null")
    with pytest.raises(InputError, match=message):
        build(cfg, tmp_path)
    assert not (tmp_path / "out" / "build_info.json").exists()
    with pytest.raises(InputError, match="kept 0 of 2"):
        build(cfg, tmp_path)


def test_build_with_fewer_pairs_than_a_batch_fails(tmp_path):
    from t2i_align.errors import InputError

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na blue boat\n")
    cfg = build_cfg(["+dataset=pick_style_cartoon", *FAST_BUILD, f"dataset.prompts={prompts}",
                     f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(InputError, match="kept 2 of 2 generated pairs, fewer than the 4 needed; 0 were not kept"):
        build(cfg, tmp_path, min_pairs=4)
    assert build(cfg, tmp_path, min_pairs=2) == tmp_path / "out"
    assert (tmp_path / "out" / "build_info.json").is_file()


def test_tiny_model_without_data_arguments_stops_at_once_with_the_fix(tmp_path):
    """model=tiny_sdxl with the default data (the toy set, built by the model) stops before
    generating anything, naming data=generated."""
    from t2i_align.errors import InputError
    from t2i_align.training.recipe import run_training

    for model in ("tiny_sdxl", "tiny_sd21"):
        cfg = make_cfg([f"model={model}", "data=toy_pickstyle", "trainer=toy", "method=mapo"])
        with pytest.raises(InputError, match=rf"model={model} has random weights, so it cannot build the data set "
                                             r"data.build=toy_pickstyle .*Use data=generated"):
            run_training(cfg, tmp_path / model)
    assert not (tmp_path / "tiny_sdxl" / "metrics.jsonl").exists()
