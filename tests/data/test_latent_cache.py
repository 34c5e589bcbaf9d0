"""Latent + text-embedding cache: training from it equals training from images, it is keyed,
refused when the key changes, resumable, and the cached run loads no VAE / text encoder."""

import json
from pathlib import Path

import pytest
import torch

from t2i_align.data.latent_cache import CacheKeyMismatch, CachedPairs, build_latent_cache
from tests.training.helpers import read_metrics, train

CACHE = ["data.cache.dtype=float32", "data.random_flip=true", "trainer.max_steps=3"]


def _cached(tmp_path, name="cache"):
    return ["data.cache.enabled=true", f"data.cache.dir={tmp_path / name}"]


def _assert_same_run(run_a, run_b):
    """Same losses and gradient norms at every step. (Final weights are not compared: Adam's first
    updates are +-lr for any gradient, so the 1e-7 noise of encoding a caption alone rather than
    in a batch flips near-zero gradients' updates; the losses of later steps, which depend on the
    updated weights, would show any real difference.)"""
    metrics_a, metrics_b = read_metrics(run_a), read_metrics(run_b)
    # DPO's beta (5000) scales float noise (2e-4 measured with 2 threads): 1e-3, still far below
    # the percents to tens of percents any different noise / crop / caption makes
    for key, rel in (("loss", 1e-3), ("grad_norm", 1e-3)):
        a, b = [m[key] for m in metrics_a], [m[key] for m in metrics_b]
        assert a == pytest.approx(b, rel=rel), key
    return [m["loss"] for m in metrics_a]


@pytest.mark.parametrize("method,extra", [
    ("mapo", ["trainer.caption_dropout=0.5"]),   # dropped captions take the cached empty prompt
    ("dpo", []),                                 # with a frozen-copy reference
])
def test_training_from_cache_equals_training_from_images(tmp_path, method, extra):
    common = [f"method={method}", *CACHE, *extra]
    run_i, _ = train(tmp_path / "images", common)
    run_c, _ = train(tmp_path / "cached", common + _cached(tmp_path))
    losses = _assert_same_run(run_i, run_c)
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    info = json.loads((tmp_path / "cache" / "cache_info.json").read_text())
    assert info["rows"] == info["valid_rows"] == 15 and info["skipped_rows"] == 0  # 16 generated, 1 tie dropped
    # flipped variants are cached; with random_flip the run used both orientations
    cached = CachedPairs(tmp_path / "cache", random_flip=True, seed=0)
    plain = CachedPairs(tmp_path / "cache", random_flip=False, seed=0)
    mirrored = [i for i in range(15) if not torch.equal(cached[i]["latent_mean_w"], plain[i]["latent_mean_w"])]
    assert 0 < len(mirrored) < 15


def test_per_image_captions_from_cache_equal_images(tmp_path):
    """DCPO conditions each image on its own caption (the generated pairs have "a vivid ..." /
    "a dull ..." captions per image): both come from the cached caption table."""
    common = ["method=dcpo", *CACHE, "trainer.max_steps=2"]
    run_i, _ = train(tmp_path / "images", common)
    run_c, _ = train(tmp_path / "cached", common + _cached(tmp_path))
    _assert_same_run(run_i, run_c)
    captions = json.loads((tmp_path / "cache" / "captions.json").read_text())
    assert captions[0] == ""
    assert any(c.startswith("a vivid ") for c in captions) and any(c.startswith("a dull ") for c in captions)


def test_cached_run_loads_no_vae_or_text_encoder(tmp_path, monkeypatch):
    from t2i_align.training import recipe

    train(tmp_path / "first", [*CACHE, "trainer.max_steps=1"] + _cached(tmp_path))  # builds the cache
    calls = []
    real = recipe.load_parts

    def spy(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls.append((kwargs.get("with_vae"), kwargs.get("with_text_encoders"), parts.vae, parts.text_encoders))
        return parts

    monkeypatch.setattr(recipe, "load_parts", spy)
    train(tmp_path / "second", [*CACHE, "trainer.max_steps=1"] + _cached(tmp_path))
    assert calls == [(False, False, None, [])]


def test_changed_key_is_refused_or_gets_its_own_folder(tmp_path, monkeypatch):
    train(tmp_path / "a", [*CACHE, "trainer.max_steps=1"] + _cached(tmp_path))
    # same explicit folder, other resolution -> refused, naming the key
    with pytest.raises(CacheKeyMismatch, match="resolution: cached 32 vs now 64"):
        train(tmp_path / "b", [*CACHE, "trainer.max_steps=1", "data.resolution=64"] + _cached(tmp_path))
    with pytest.raises(CacheKeyMismatch, match="flip_variants"):
        train(tmp_path / "c", [*CACHE, "trainer.max_steps=1", "data.cache.flip_variants=false",
                               "data.random_flip=false"] + _cached(tmp_path))
    with pytest.raises(CacheKeyMismatch, match="time_ids: cached 'fixed' vs now 'original'"):
        train(tmp_path / "c2", [*CACHE, "trainer.max_steps=1", "model.time_ids=original"] + _cached(tmp_path))
    # automatic folders: one per key under $T2I_ALIGN_CACHE/latents
    monkeypatch.setenv("T2I_ALIGN_CACHE", str(tmp_path / "auto"))
    auto = [*CACHE, "trainer.max_steps=1", "data.cache.enabled=true"]
    train(tmp_path / "d", auto)
    train(tmp_path / "e", auto)  # same key: reused
    assert len(list((tmp_path / "auto" / "latents").iterdir())) == 1
    train(tmp_path / "f", auto + ["data.num_generated=20"])
    folders = sorted((tmp_path / "auto" / "latents").iterdir())
    assert len(folders) == 2
    keys = [json.loads((f / "cache_key.json").read_text()) for f in folders]
    assert {k["data"]["num_generated"] for k in keys} == {16, 20}


def test_cache_options_that_cannot_work_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data.random_crop=false"):
        train(tmp_path / "a", [*CACHE, "data.random_crop=true"] + _cached(tmp_path, "c1"))
    with pytest.raises(ValueError, match="holds no flipped variants"):
        train(tmp_path / "b", [*CACHE, "data.cache.flip_variants=false"] + _cached(tmp_path, "c2"))


def _tiny_table(n=5, bad_row=None):
    import io

    from datasets import Dataset
    from PIL import Image

    def jpeg(seed):
        g = torch.Generator().manual_seed(seed)
        array = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG")
        return buf.getvalue()

    rows = {"caption": [f"prompt {i % 3}" for i in range(n)], "jpg_0": [jpeg(2 * i) for i in range(n)],
            "jpg_1": [jpeg(2 * i + 1) for i in range(n)], "label_0": [float(i % 2) for i in range(n)]}
    if bad_row is not None:
        rows["jpg_1"][bad_row] = b"not an image"
    return Dataset.from_dict(rows)


def _build(table, folder, shard_size=2, process_index=0, num_processes=1, key=None):
    from t2i_align.models.loading import load_parts

    parts = load_parts("tiny:sdxl")
    return build_latent_cache(table, folder, key or {"test": 1}, vae=parts.vae, text_encoders=parts.text_encoders,
                              tokenizers=parts.tokenizers, family="sdxl", resolution=32, flip_variants=True,
                              per_image_captions=False, storage_dtype="float32", shard_size=shard_size,
                              process_index=process_index, num_processes=num_processes)


def test_cache_contents_bad_rows_and_resume(tmp_path):
    from t2i_align.data.dataset import PreferencePairs
    from t2i_align.models.loading import load_parts
    from t2i_align.models.latents import encode_posterior

    table = _tiny_table(5, bad_row=3)
    folder = _build(table, tmp_path / "c")
    info = json.loads((folder / "cache_info.json").read_text())
    assert (info["rows"], info["valid_rows"], info["skipped_rows"], info["shards"]) == (5, 4, 1, 3)
    cached = CachedPairs(folder, random_flip=False)
    # the unreadable pair is skipped, as the image path skips it
    assert cached[3]["index"] == 3 and "row 3 had an unreadable image when the latent cache" in cached[3]["skipped"]

    # contents: the posterior of PreferencePairs' centre crop, chosen first (label_0 == 0 swaps)
    images = PreferencePairs(table, resolution=32, random_crop=False, random_flip=False)
    vae = load_parts("tiny:sdxl").vae
    for i in (0, 1):
        item = images[i]
        mean, std = encode_posterior(vae, torch.stack([item["pixels_w"], item["pixels_l"]]))
        torch.testing.assert_close(cached[i]["latent_mean_w"], mean[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(cached[i]["latent_std_l"], std[1], atol=1e-6, rtol=1e-6)
        assert cached[i]["crop_top_left"].tolist() == list(item["crop_top_left"])
    # the flipped variant is the mirrored crop, with the flipped crop corner (48x40 -> 38x32: left 3 -> 3)
    item = images[0]
    flipped = encode_posterior(vae, item["pixels_w"].flip(-1)[None])[0][0]
    shard = next((folder / "shards").glob("rows-00000-*"))
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(shard)["latent_mean_w_flip"][0], flipped, atol=1e-6, rtol=1e-6)
    assert load_file(shard)["crop_top_left_flip"][0].tolist() == [0, 38 - 3 - 32]

    # resume: an unfinished build (one shard and the info missing) re-encodes only that shard
    (folder / "cache_info.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()}
    missing = sorted(kept)[1]
    (folder / "shards" / missing).unlink()
    _build(table, folder)
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()}
    assert after.keys() == kept.keys()
    assert all(after[n] == kept[n] for n in kept if n != missing)
    assert json.loads((folder / "cache_info.json").read_text()) == info

    with pytest.raises(CacheKeyMismatch, match="test: cached 1 vs now 2"):
        _build(table, folder, key={"test": 2})


def test_multi_process_build_splits_shards(tmp_path):
    """Shard k is built by process k mod N; together they make the same cache as one process."""
    table = _tiny_table(5)
    one = _build(table, tmp_path / "one")
    split = tmp_path / "split"
    # process 1 of 2 first (its shards only: no info yet), then process 0 finishes and writes the info
    _build(table, split, process_index=1, num_processes=2)
    assert sorted(p.name for p in (split / "shards").iterdir()) == ["rows-00001-of-00003.safetensors"]
    assert not (split / "cache_info.json").exists()
    _build(table, split, process_index=0, num_processes=2)
    from safetensors.torch import load_file

    for name in sorted(p.name for p in (one / "shards").iterdir()):
        a, b = load_file(one / "shards" / name), load_file(split / "shards" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    assert Path(split / "cache_info.json").is_file()


def test_cache_command_builds_what_training_reads(tmp_path, monkeypatch):
    """python -m t2i_align.cache_latents takes the training config; the training run then finds the
    cache complete and loads neither VAE nor text encoders."""
    import subprocess
    import sys

    from t2i_align.training import recipe
    from tests.training.helpers import TINY_CLI

    folder = tmp_path / "cache"
    args = [*TINY_CLI, "data.num_generated=16", "data.cache.dtype=float32", f"data.cache.dir={folder}"]
    done = subprocess.run([sys.executable, "-m", "t2i_align.cache_latents", *args], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"latent cache: {folder}" in done.stdout and "15 pairs (0 unreadable skipped)" in done.stdout
    loaded = []
    real = recipe.load_parts
    monkeypatch.setattr(recipe, "load_parts", lambda *a, **k: loaded.append(k["with_vae"]) or real(*a, **k))
    run, _ = train(tmp_path / "run", [*CACHE, "trainer.max_steps=1", "data.cache.enabled=true",
                                      f"data.cache.dir={folder}"])
    assert loaded == [False] and len(read_metrics(run)) == 1


def test_cache_without_std_trains_on_the_posterior_mean(tmp_path):
    from t2i_align.models.loading import load_parts
    from t2i_align.models.latents import encode_posterior

    table = _tiny_table(3)
    parts = load_parts("tiny:sdxl")
    folder = build_latent_cache(table, tmp_path / "c", {"k": 1}, vae=parts.vae, text_encoders=parts.text_encoders,
                                tokenizers=parts.tokenizers, family="sdxl", resolution=32, flip_variants=False,
                                per_image_captions=False, storage_dtype="float32", store_std=False)
    from safetensors.torch import load_file

    shard = load_file(next((folder / "shards").iterdir()))
    assert "latent_mean_w" in shard and not any(k.startswith("latent_std") for k in shard)
    item = CachedPairs(folder, random_flip=False)[0]
    assert torch.count_nonzero(item["latent_std_w"]) == 0
    from t2i_align.data.dataset import PreferencePairs

    pair = PreferencePairs(table, resolution=32, random_crop=False, random_flip=False)[0]
    mean, _ = encode_posterior(parts.vae, pair["pixels_w"][None])
    torch.testing.assert_close(item["latent_mean_w"], mean[0], atol=1e-6, rtol=1e-6)
