"""The evaluation image cache is keyed by what makes the images (weights by content, sampling
settings), never by a model's name or path, and is safe for several processes at once."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from t2i_align.evaluation import fingerprint
from t2i_align.evaluation.sampling import (ModelKey, cache_folders, generate_cached, load_pipeline,
                                           model_cache_key, pipeline_sources)
from tests.evaluation import cache_writer

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [0]
SETTINGS = {"steps": 2, "guidance_scale": 1.0, "resolution": 32}


def ev(**changes):
    return OmegaConf.create({"steps": 2, "guidance_scale": 1.0, "negative_prompt": None, "batch_size": 4,
                             "device": "cpu", **changes})


def sample(cache, models, base="tiny:sdxl", **changes):
    """sample_models as evaluate runs it; returns ({name: {(prompt, seed): path}}, images generated)."""
    from t2i_align.evaluate import model_specs, sample_models

    before = len(list(Path(cache).rglob("*.png")))
    specs = model_specs(base, models)
    images = sample_models(base, specs, PROMPTS, SEEDS, cache, ev(**changes), 32, model_cfg={"path": base})
    return images, len(list(Path(cache).rglob("*.png"))) - before


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def folder_of(paths: dict) -> Path:
    (folder,) = {p.parent for p in paths.values()}
    return folder


def _tiny_unet(tiny_dirs):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_dirs["sdxl"], subfolder="unet")


@pytest.fixture(scope="module")
def weights(tiny_dirs, perturb_lora, tmp_path_factory):
    """Two LoRAs and two full UNets with different (seeded) weights for the tiny SDXL."""
    from t2i_align.models.lora import add_lora, save_lora

    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name, seed in (("lora_a", 1), ("lora_b", 2)):
        unet = _tiny_unet(tiny_dirs)
        add_lora(unet, rank=4)
        perturb_lora(unet, seed=seed, scale=0.3)
        save_lora(unet, root / name, "sdxl")
        out[name] = root / name
    for name, seed in (("unet_a", 1), ("unet_b", 2)):
        unet = _tiny_unet(tiny_dirs)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        unet.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_same_name_with_other_lora_or_unet_regenerates(weights, tmp_path):
    cache = tmp_path / "cache"
    first, made = sample(cache, [{"name": "mapo", "lora": str(weights["lora_a"])}])
    assert made == 2 * len(PROMPTS)  # base + mapo
    second, made = sample(cache, [{"name": "mapo", "lora": str(weights["lora_b"])}])
    assert made == len(PROMPTS), "a new LoRA under an old name must be sampled, not re-scored"
    assert folder_of(second["mapo"]) != folder_of(first["mapo"])
    assert folder_of(second["base"]) == folder_of(first["base"])
    for key in first["mapo"]:
        assert np.abs(pixels(first["mapo"][key]) - pixels(second["mapo"][key])).max() > 0
    # the same for full UNets
    unet_a, made_a = sample(cache, [{"name": "mapo", "unet": str(weights["unet_a"])}])
    unet_b, made_b = sample(cache, [{"name": "mapo", "unet": str(weights["unet_b"])}])
    assert made_a == made_b == len(PROMPTS)
    for key in unet_a["mapo"]:
        assert np.abs(pixels(unet_a["mapo"][key]) - pixels(unet_b["mapo"][key])).max() > 0
    # every folder says what it holds; the name points at the four mapo folders
    assert len(cache_folders(cache, "mapo")) == 4 and len(cache_folders(cache, "base")) == 1
    meta = json.loads((folder_of(second["mapo"]) / "model.json").read_text())
    assert meta["seen_as"][0]["lora"] == str(weights["lora_b"]) and meta["key"]["lora"]["scale"] == 1.0
    assert set(json.loads((folder_of(second["mapo"]) / "prompts.json").read_text()).values()) == set(PROMPTS)


def test_base_with_another_model_path_regenerates(weights, tiny_dirs, tmp_path):
    other = tmp_path / "other_sdxl"
    shutil.copytree(tiny_dirs["sdxl"], other)
    shutil.rmtree(other / "unet")
    shutil.copytree(weights["unet_a"], other / "unet")  # another base: same layout, other UNet weights
    cache = tmp_path / "cache"
    first, made = sample(cache, [])
    assert made == len(PROMPTS)
    second, made = sample(cache, [], base=str(other))
    assert made == len(PROMPTS) and folder_of(second["base"]) != folder_of(first["base"])
    assert np.abs(pixels(first["base"][(PROMPTS[0], 0)]) - pixels(second["base"][(PROMPTS[0], 0)])).max() > 0
    _, made = sample(cache, [], base="tiny:sd21")
    assert made == len(PROMPTS)


def test_unchanged_model_under_another_name_or_path_reuses(weights, tiny_dirs, tmp_path):
    cache = tmp_path / "cache"
    first, made = sample(cache, [{"name": "mapo", "lora": str(weights["lora_a"])}])
    assert made == 2 * len(PROMPTS)
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    # the same LoRA under another name, as a bare file elsewhere; the same base copied elsewhere
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(weights["lora_a"] / "pytorch_lora_weights.safetensors", copy)
    base_copy = tmp_path / "base_copy"
    shutil.copytree(tiny_dirs["sdxl"], base_copy)
    again, made = sample(cache, [{"name": "renamed", "lora": str(copy)}], base=str(base_copy))
    assert made == 0
    assert folder_of(again["renamed"]) == folder_of(first["mapo"])
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")} == stamps
    names = [s["name"] for s in json.loads((folder_of(first["mapo"]) / "model.json").read_text())["seen_as"]]
    assert names == ["mapo", "renamed"]


def test_sampling_settings_change_the_key(weights):
    spec = {"name": "mapo", "lora": str(weights["lora_a"])}
    reference = model_cache_key(spec, "tiny:sdxl", SETTINGS).digest
    assert model_cache_key(dict(spec, name="other"), "tiny:sdxl", SETTINGS).digest == reference
    changes = [{"steps": 3}, {"guidance_scale": 2.0}, {"negative_prompt": "blurry"}, {"negative_prompt": ""},
               {"resolution": 64}, {"dtype": torch.float16}, {"device": "cuda"}]
    digests = {model_cache_key(spec, "tiny:sdxl", {**SETTINGS, **c}).digest for c in changes}
    assert len(digests) == len(changes) and reference not in digests
    scales = {model_cache_key(dict(spec, lora_scale=s), "tiny:sdxl", SETTINGS).digest for s in (0.0, 0.5, 1.0)}
    assert len(scales) == 3 and reference in scales  # 1 is the default; 0 is a scale too
    assert model_cache_key({"name": "mapo", "lora": str(weights["lora_b"])}, "tiny:sdxl", SETTINGS).digest != reference
    assert model_cache_key(spec, {"path": "tiny:sdxl", "variant": "fp16"}, SETTINGS).digest != reference
    with pytest.raises(ValueError, match="steps"):
        model_cache_key(spec, "tiny:sdxl", {"guidance_scale": 1.0, "resolution": 32})


def test_negative_prompt_and_lora_scale_reach_the_pipeline(weights, tmp_path):
    settings = {**SETTINGS, "guidance_scale": 5.0}
    base = load_pipeline("tiny:sdxl")
    plain, _ = generate_cached(base, model_cache_key({}, "tiny:sdxl", settings), PROMPTS[:1], SEEDS, tmp_path)
    negative, made = generate_cached(base, model_cache_key({}, "tiny:sdxl", {**settings, "negative_prompt": "blurry"}),
                                     PROMPTS[:1], SEEDS, tmp_path)
    assert made == 1
    key = (PROMPTS[0], 0)
    assert np.abs(pixels(plain[key]) - pixels(negative[key])).max() > 0
    spec = {"lora": str(weights["lora_a"])}
    lora = load_pipeline(**pipeline_sources(spec, "tiny:sdxl"))
    full, _ = generate_cached(lora, model_cache_key(spec, "tiny:sdxl", settings), PROMPTS[:1], SEEDS, tmp_path)
    off, _ = generate_cached(lora, model_cache_key(dict(spec, lora_scale=0.0), "tiny:sdxl", settings),
                             PROMPTS[:1], SEEDS, tmp_path)
    assert np.abs(pixels(full[key]) - pixels(plain[key])).max() > 0
    assert np.abs(pixels(off[key]) - pixels(plain[key])).max() <= 1  # scale 0: the base's image


def test_keys_of_tiny_and_hub_models(tiny_dirs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    tiny = model_cache_key({}, "tiny:sdxl", SETTINGS)
    assert tiny.key["base"]["content"]["files"] > 5 and tiny.source["base"] == "tiny:sdxl"
    assert tiny.key["scheduler"]["class"] == "EulerDiscreteScheduler"
    assert model_cache_key({}, "tiny:sdxl", SETTINGS) == tiny  # stable
    assert model_cache_key({}, tiny_dirs["sdxl"], SETTINGS).digest == tiny.digest  # the folder it resolves to
    assert model_cache_key({}, "tiny:sd21", SETTINGS).key["base"] != tiny.key["base"]
    # a hub id: its revision until the local Hugging Face cache knows the commit, then the commit
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = model_cache_key({}, "org/model", SETTINGS)
    assert hub.key["base"] == {"hub_id": "org/model", "revision": "main"} and hub.key["scheduler"] is None
    repo = tmp_path / "hub" / "models--org--model"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(Path(tiny_dirs["sdxl"]) / "scheduler", repo / "snapshots" / commit / "scheduler")
    cached = model_cache_key({}, "org/model", SETTINGS)
    assert cached.key["base"] == {"hub_id": "org/model", "commit": commit}
    assert cached.key["scheduler"] == tiny.key["scheduler"]
    assert model_cache_key({}, {"path": "org/model", "revision": "b" * 40}, SETTINGS).key["base"]["commit"] == "b" * 40
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_cache_key({}, str(tmp_path / "missing"), SETTINGS)


def test_big_file_fingerprint_is_remembered_but_never_stale(tmp_path):
    big = tmp_path / "weights.safetensors"
    data = bytearray(os.urandom(fingerprint.SIDECAR_MIN_BYTES + 1024))
    big.write_bytes(bytes(data))
    first = fingerprint.file_sha256(big)
    stat = big.stat()
    data[len(data) // 2] ^= 0xFF  # one byte in the middle, same size, mtime set back: ctime still moves
    big.write_bytes(bytes(data))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert big.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint.file_sha256(big) != first
    assert fingerprint.file_sha256(big) == fingerprint.file_sha256(shutil.copy(big, tmp_path / "copy.safetensors"))


def test_generate_cached_refuses_names_and_mismatched_pipelines(tmp_path):
    pipe = load_pipeline("tiny:sdxl")
    with pytest.raises(TypeError, match="ModelKey"):
        generate_cached(pipe, "base", PROMPTS, SEEDS, tmp_path)
    key = model_cache_key({}, "tiny:sdxl", {**SETTINGS, "dtype": torch.float16})
    with pytest.raises(ValueError, match="dtype float32 vs key float16"):
        generate_cached(pipe, key, PROMPTS, SEEDS, tmp_path)
    assert not key.folder(tmp_path).exists()
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler DDIMScheduler"):
        generate_cached(pipe, model_cache_key({}, "tiny:sdxl", SETTINGS), PROMPTS, SEEDS, tmp_path)
    swapped = model_cache_key({}, "tiny:sdxl", {**SETTINGS, "scheduler": pipe.scheduler})
    assert generate_cached(pipe, swapped, PROMPTS, SEEDS, tmp_path)[1] == len(PROMPTS)
    assert generate_cached(None, swapped, PROMPTS, SEEDS, tmp_path)[1] == 0  # all cached: no pipeline needed
    with pytest.raises(ValueError, match="not cached"):
        generate_cached(None, swapped, PROMPTS + ["new"], SEEDS, tmp_path)


def test_concurrent_writers_lose_nothing_and_readers_see_whole_files(tmp_path):
    cache, workers, rounds, index_rounds = tmp_path / "cache", 3, 12, 40
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=cache_writer.write, args=(str(cache), i, rounds, index_rounds, start))
             for i in range(workers)]
    for p in procs:
        p.start()
    start.set()
    folder = ModelKey(cache_writer.KEY, {}).folder(cache)
    seen, broken = set(), []
    while any(p.is_alive() for p in procs):  # read whatever is published while the writers run
        for path in list(folder.glob("*.png")) if folder.is_dir() else []:
            try:
                with Image.open(path) as image:
                    image.load()
                seen.add(path.name)
            except FileNotFoundError:
                pass
            except Exception as err:  # a truncated or half-written PNG
                broken.append(f"{path.name}: {err}")
        for name in ("prompts.json", "model.json"):
            if (folder / name).is_file():
                try:
                    json.loads((folder / name).read_text())
                except ValueError as err:
                    broken.append(f"{name}: {err}")
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert not broken, broken[:5]
    assert seen, "the reader never overlapped the writers"
    prompts = cache_writer.SHARED + [cache_writer.own_prompt(w, r) for w in range(workers) for r in range(rounds)]
    indexed = prompts + [cache_writer.own_prompt(w, r) for w in range(workers)
                         for r in range(rounds, rounds + index_rounds)]
    index = json.loads((folder / "prompts.json").read_text())
    assert sorted(index.values()) == sorted(indexed), "a writer's prompt index entries were lost"
    names = {s["name"] for s in json.loads((folder / "model.json").read_text())["seen_as"]}
    assert names == {f"writer{w}" for w in range(workers)}
    assert not list(cache.rglob("*.tmp")), "temporary files left behind"
    pngs = list(folder.glob("*.png"))
    assert len(pngs) == len(prompts) * len(cache_writer.SEEDS)
    for path in pngs:
        with Image.open(path) as image:
            image.load()
            assert image.size == (cache_writer.SIZE, cache_writer.SIZE)
