"""Latent and text-embedding cache: encode every pair once, then train without VAE or text encoders.

The papers' scripts run the VAE on both images of every pair at every step (and the text
encoders on every caption). Those outputs never change during training, so they can be computed
once. What is stored, per table row (chosen image first, as PreferencePairs returns it):

- the VAE posterior's mean and std of both images (not a sample: training still draws the
  posterior sample each step, through the same function as the image path, so the two paths
  give the same latents for the same random stream; FLUX.2's family takes the posterior mode, as
  its scripts do), centre-cropped at the training resolution;
  with store_std=False only the mean (half the storage; training then uses the posterior mean);
  with flip variants also those of the horizontally flipped crop;
- SDXL micro-conditioning (original sizes, crop corner, and the crop corner of the flipped crop);
- an id into a table of unique caption embeddings (what the family's TEXT_CACHE names: encoder
  hidden states, and the pooled embedding for SDXL), plus the embedding of the empty prompt for
  caption dropout.

Layout: <dir>/cache_key.json, <dir>/captions.safetensors + captions.json,
<dir>/shards/rows-00000-of-00004.safetensors ..., <dir>/cache_info.json (written last: the cache
is complete). Shards are written atomically, so a killed build resumes at the first missing one,
and under several processes shard k is built by process k mod N.

What caching costs: crops are fixed (centre) and flips are limited to the cached variants, so
data.random_crop must be false; data.random_flip needs flip variants (2x the latent storage).
The cache is keyed by everything that changes its content (the key is written next to it): a
different key gets a different automatic folder, and a folder built with another key is refused,
naming what changed. It is never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import torch

from t2i_align.data.dataset import read_pair, split_skipped
from t2i_align.data.images import BadImageError
from t2i_align.data.transforms import short_side_size, pair_transform
from t2i_align.errors import InputError, InputNotFoundError

log = logging.getLogger("t2i_align.cache")

CACHE_FORMAT = 2  # 2: alpha over white, EXIF orientation, 16-bit grey scaled (data/images.py)
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CacheKeyMismatch(InputError):
    """A cache folder was built with other settings than the ones asked for."""


def weights_signature(model_path: str | None) -> list:
    """Identity of a model's weights: for a local folder its weight files' names, sizes and
    modification times (a re-trained model changes them); for a hub id the id itself."""
    from t2i_align.models.tiny import resolve_model_path

    if model_path is None:
        return [None]
    folder = Path(resolve_model_path(model_path))
    if not folder.is_dir():
        return [model_path]
    files = [p for ext in ("*.safetensors", "*.bin") for p in folder.rglob(ext)]
    return [model_path] + sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime)) for p in files)


def cache_key(*, model_path: str, vae_path: str | None, revision, variant, family: str, resolution: int,
              flip_variants: bool, per_image_captions: bool, storage_dtype: str, vae_dtype: str,
              data: dict, table_fingerprint: str | None = None, store_std: bool = True,
              time_ids: str = "fixed", text_options: dict | None = None) -> dict:
    """Everything that changes the cache's content, as a JSON-able dict. time_ids (SDXL's
    add_time_ids mode) does not change the stored tensors (sizes and crops are always kept) but
    a cache is keyed by the conditioning it was built for, so runs never mix the two.
    text_options: the T5 families' text settings (max_sequence_length, use_t5), which change the
    stored embeddings; keyed only when given, so UNet-family keys are unchanged."""
    extra = {"text_options": dict(text_options)} if text_options else {}
    return {**extra, "format": CACHE_FORMAT, "model": model_path, "model_weights": weights_signature(model_path),
            "vae": vae_path, "vae_weights": weights_signature(vae_path) if vae_path else None,
            "revision": revision, "variant": variant, "family": family, "resolution": int(resolution),
            "crop": "center", "flip_variants": bool(flip_variants), "per_image_captions": bool(per_image_captions),
            "storage_dtype": storage_dtype, "store_std": bool(store_std), "vae_dtype": vae_dtype, "data": data,
            "table_fingerprint": table_fingerprint, "time_ids": time_ids}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_cache_dir(key: dict) -> Path:
    from t2i_align.models.clip_tokenizer import cache_dir

    return cache_dir() / "latents" / key_hash(key)


def check_key(folder: Path, key: dict) -> None:
    """Write the key into a new folder, or refuse a folder built with another key."""
    path = folder / "cache_key.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, json.dumps(key, indent=2, sort_keys=True, default=str))
        return
    found = json.loads(path.read_text())
    wanted = json.loads(json.dumps(key, default=str))
    changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if changed:
        details = "; ".join(f"{k}: cached {found.get(k)!r} vs now {wanted.get(k)!r}" for k in changed)
        raise CacheKeyMismatch(f"the latent cache {folder} was built with other settings ({details}). "
                               "Delete it, point data.cache.dir elsewhere, or set data.cache.dir=null "
                               "for an automatic folder per key")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _shard_name(k: int, n: int) -> str:
    return f"rows-{k:05d}-of-{n:05d}.safetensors"


@torch.no_grad()
def _encode_shard(table, rows: range, *, vae, resolution: int, flip_variants: bool, per_image_captions: bool,
                  caption_ids: dict, storage_dtype, batch_size: int, store_std: bool = True,
                  max_image_pixels: int | None = None) -> dict:
    """The tensors of one shard (rows in table order; unreadable rows have valid = 0)."""
    from t2i_align.models.latents import encode_posterior

    count = len(rows)
    out = {"valid": torch.zeros(count, dtype=torch.uint8), "row": torch.tensor(list(rows), dtype=torch.long),
           "source_row": torch.tensor(list(rows), dtype=torch.long),
           "caption_w": torch.zeros(count, dtype=torch.long), "caption_l": torch.zeros(count, dtype=torch.long),
           "original_size_w": torch.zeros(count, 2, dtype=torch.long),
           "original_size_l": torch.zeros(count, 2, dtype=torch.long),
           "crop_top_left": torch.zeros(count, 2, dtype=torch.long),
           "crop_top_left_flip": torch.zeros(count, 2, dtype=torch.long)}
    variants = ("", "_flip") if flip_variants else ("",)
    pending: list = []

    def flush():
        if not pending:
            return
        for suffix in variants:
            pixels = torch.cat([torch.stack([p[f"pixels_w{suffix}"] for _, p in pending]),
                                torch.stack([p[f"pixels_l{suffix}"] for _, p in pending])])
            mean, std = encode_posterior(vae, pixels)
            mean, std = mean.to("cpu", storage_dtype), std.to("cpu", storage_dtype)
            n = len(pending)
            for name, value in (("mean", mean), ("std", std))[:2 if store_std else 1]:
                for side, part in (("w", value[:n]), ("l", value[n:])):
                    key = f"latent_{name}_{side}{suffix}"
                    if key not in out:
                        out[key] = torch.zeros((count, *part.shape[1:]), dtype=storage_dtype)
                    out[key][[j for j, _ in pending]] = part
        pending.clear()

    for j, index in enumerate(rows):
        row = table[index]
        out["source_row"][j] = int(row.get("source_row", index))
        try:
            found = read_pair(row, index, per_image_captions, max_image_pixels)
        except BadImageError as error:
            log.warning("latent cache: skipping pair: %s", error)
            continue
        image_w, image_l, _, caption_w, caption_l = found
        # Centre crop without flip (random_crop=False draws nothing from rng), as PreferencePairs does.
        item = pair_transform(image_w, image_l, resolution, False, False, random.Random(0))
        if flip_variants:
            # The image path crops, then flips the crop (transforms.pair_transform): the flipped
            # variant is the same crop mirrored, and its corner is width - left - resolution.
            item["pixels_w_flip"], item["pixels_l_flip"] = item["pixels_w"].flip(-1), item["pixels_l"].flip(-1)
            _, width = short_side_size(image_w.height, image_w.width, resolution)
            top, left = item["crop_top_left"]
            out["crop_top_left_flip"][j] = torch.tensor([top, width - left - resolution])
        out["valid"][j] = 1
        out["caption_w"][j], out["caption_l"][j] = caption_ids[caption_w], caption_ids[caption_l]
        out["original_size_w"][j] = torch.tensor(item["original_size_w"])
        out["original_size_l"][j] = torch.tensor(item["original_size_l"])
        out["crop_top_left"][j] = torch.tensor(item["crop_top_left"])
        pending.append((j, item))
        if len(pending) >= batch_size:
            flush()
    flush()
    return out


@torch.no_grad()
def _encode_captions(captions: list[str], text_encoders, tokenizers, family, storage_dtype,
                     batch_size: int) -> dict:
    """The family's cached text tensors (its TEXT_CACHE: "hidden", and "pooled" for SDXL) of `captions`."""
    from t2i_align.families import get_family

    fam = get_family(family)
    parts: dict = {name: [] for name in fam.TEXT_CACHE}
    for i in range(0, len(captions), batch_size):
        cond = fam.encode_prompts(captions[i:i + batch_size], text_encoders, tokenizers)
        for name, key in fam.TEXT_CACHE.items():
            parts[name].append(cond[key].to("cpu", storage_dtype))
    return {name: torch.cat(values) for name, values in parts.items()}


def build_latent_cache(table, folder, key: dict, *, vae, text_encoders, tokenizers, family,
                       resolution: int, flip_variants: bool, per_image_captions: bool,
                       storage_dtype: str = "float16", shard_size: int = 1024, batch_size: int = 16,
                       store_std: bool = True, max_image_pixels: int | None = None,
                       process_index: int = 0, num_processes: int = 1, wait=lambda: None) -> Path:
    """Build (or finish) the cache of `table` in `folder`. Every process calls it; shard k is
    encoded by process k mod num_processes; `wait` is a barrier (accelerator.wait_for_everyone).
    Returns the folder. Raises CacheKeyMismatch for a folder built with another key."""
    folder = Path(folder)
    if process_index == 0:
        check_key(folder, key)
    wait()
    check_key(folder, key)
    if (folder / "cache_info.json").is_file():
        return folder
    dtype = STORAGE_DTYPES[storage_dtype]
    num_rows = len(table)
    num_shards = max(1, -(-num_rows // shard_size))

    # Unique captions (of both images for per-image captions), plus the empty prompt for dropout.
    captions = [""]
    ids = {"": 0}
    columns = ["caption"] + (["caption_0", "caption_1"] if per_image_captions else [])
    for column in columns:
        for caption in table[column]:
            if caption not in ids:
                ids[caption] = len(captions)
                captions.append(caption)
    if process_index == 0 and not (folder / "captions.safetensors").is_file():
        tensors = _encode_captions(captions, text_encoders, tokenizers, family, dtype, batch_size)
        _atomic_save(tensors, folder / "captions.safetensors")
        _atomic_write_text(folder / "captions.json", json.dumps(captions))

    shard_dir = folder / "shards"
    shard_dir.mkdir(exist_ok=True)
    for k in range(process_index, num_shards, num_processes):
        path = shard_dir / _shard_name(k, num_shards)
        if path.is_file():
            continue
        rows = range(k * shard_size, min(num_rows, (k + 1) * shard_size))
        tensors = _encode_shard(table, rows, vae=vae, resolution=resolution, flip_variants=flip_variants,
                                per_image_captions=per_image_captions, caption_ids=ids, storage_dtype=dtype,
                                batch_size=batch_size, store_std=store_std, max_image_pixels=max_image_pixels)
        _atomic_save(tensors, path)
        log.info("latent cache: shard %d/%d written (%d rows)", k + 1, num_shards, len(rows))
    wait()
    if process_index == 0:
        from t2i_align.families import get_family

        scaling_factor, shift_factor = get_family(family).latent_factors(vae)
        valid = 0
        for k in range(num_shards):
            from safetensors import safe_open

            with safe_open(str(shard_dir / _shard_name(k, num_shards)), framework="pt") as f:
                valid += int(f.get_tensor("valid").sum())
        info = {"rows": num_rows, "valid_rows": valid, "skipped_rows": num_rows - valid, "shards": num_shards,
                "shard_size": shard_size, "captions": len(captions), "flip_variants": bool(flip_variants),
                "per_image_captions": bool(per_image_captions), "resolution": int(resolution),
                "store_std": bool(store_std),
                "scaling_factor": _factor(scaling_factor), "shift_factor": shift_factor, "key_hash": key_hash(key)}
        _atomic_write_text(folder / "cache_info.json", json.dumps(info, indent=2))
    wait()
    return folder


def _factor(value):
    """A family's latent factor as cache_info.json stores it: a float (the AutoencoderKL families'
    scaling factor), or a list as given (FLUX.2's per-channel BatchNorm std)."""
    return list(value) if isinstance(value, (list, tuple)) else float(value)


class CachedPairs(torch.utils.data.Dataset):
    """The pairs of a latent cache, with PreferencePairs' indexing and augmentation stream.

    Item i is table row i ({"index", "skipped": why} for a row whose images were unreadable at
    build time, skipped and counted as in the image path). The flip of item i in an epoch is drawn from the same
    random.Random(seed, epoch, index) as PreferencePairs draws it, so with the same seed the two
    datasets flip the same pairs. Shards are read through memory-mapped safetensors, opened lazily
    in each process (DataLoader workers included).
    """

    def __init__(self, folder, random_flip: bool = True, seed: int = 0):
        folder = Path(folder)
        info_path = folder / "cache_info.json"
        if not info_path.is_file():
            raise InputNotFoundError(f"{folder} is not a finished latent cache (no cache_info.json)")
        self.folder = folder
        self.info = json.loads(info_path.read_text())
        self.key = json.loads((folder / "cache_key.json").read_text())
        if random_flip and not self.info["flip_variants"]:
            raise InputError(f"data.random_flip=true, but the latent cache {folder} holds no flipped variants; "
                             "set data.cache.flip_variants=true (a new cache) or data.random_flip=false")
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self._handles: dict = {}
        self._pid = None
        shard_dir = folder / "shards"
        self.shard_paths = [shard_dir / _shard_name(k, self.info["shards"]) for k in range(self.info["shards"])]
        # The caption table is memory-mapped like the shards (SDXL: 0.3 MB per unique caption);
        # only the empty prompt's embedding (caption dropout) is held in memory.
        captions = self._open(folder / "captions.safetensors")
        self.text_names = sorted(captions.keys())  # the family's TEXT_CACHE names ("hidden", "pooled")
        self.empty_captions = {name: captions.get_slice(name)[0:1][0] for name in self.text_names}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.info["rows"]

    def _open(self, path: Path):
        """A safetensors handle per file and process (a forked DataLoader worker opens its own)."""
        from safetensors import safe_open

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def _caption(self, name: str, index: int) -> torch.Tensor:
        return self._open(self.folder / "captions.safetensors").get_slice(name)[index:index + 1][0]

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}, "_pid": None}

    def __getitem__(self, index) -> dict:
        index = int(index)
        shard = self._open(self.shard_paths[index // self.info["shard_size"]])
        j = index % self.info["shard_size"]
        row = lambda name: shard.get_slice(name)[j:j + 1][0]  # noqa: E731
        if int(row("valid")) == 0:
            source_row = int(row("source_row")) if "source_row" in shard.keys() else index
            return {"index": index, "skipped": f"row {source_row} had an unreadable image when the latent cache "
                                               f"{self.folder} was built (the build's log says why)"}
        flip = False
        if self.random_flip:  # PreferencePairs' stream: no crop draw (centre crop), then the flip
            rng = random.Random(f"t2i_align:{self.seed}:{self.epoch}:{index}")
            flip = rng.random() < 0.5
        suffix = "_flip" if flip else ""
        item = {name: row(f"{name}{suffix}") for name in ("latent_mean_w", "latent_mean_l")}
        for side in ("w", "l"):  # without stored std the posterior mean is used (std 0)
            item[f"latent_std_{side}"] = (row(f"latent_std_{side}{suffix}") if self.info.get("store_std", True)
                                          else torch.zeros_like(item[f"latent_mean_{side}"]))
        cw, cl = int(row("caption_w")), int(row("caption_l"))
        for name in self.text_names:
            item[f"{name}_w"], item[f"{name}_l"] = self._caption(name, cw), self._caption(name, cl)
        item.update(original_size_w=row("original_size_w"), original_size_l=row("original_size_l"),
                    crop_top_left=row("crop_top_left_flip" if flip else "crop_top_left"), index=index)
        return item


def collate_cached(items: list, empty_captions: dict, scaling_factor, shift_factor) -> dict:
    """Stack the good items of a batch (collate_pairs' contract for cached pairs); `empty_captions`:
    CachedPairs.empty_captions, the embedding caption dropout substitutes."""
    good, skipped = split_skipped(items)
    batch = {"size": len(good), "num_skipped": len(skipped), "skipped": skipped}
    if not good:
        return batch
    stack = lambda name: torch.stack([item[name] for item in good])  # noqa: E731
    for name in ("latent_mean_w", "latent_std_w", "latent_mean_l", "latent_std_l"):
        batch[name] = stack(name).float()
    for name, empty in empty_captions.items():  # the family's cached text tensors
        batch[f"{name}_w"], batch[f"{name}_l"] = stack(f"{name}_w").float(), stack(f"{name}_l").float()
        batch[f"empty_{name}"] = empty.float()
    batch.update(original_sizes_w=stack("original_size_w"), original_sizes_l=stack("original_size_l"),
                 crop_top_left=stack("crop_top_left"),
                 indices=torch.tensor([item["index"] for item in good], dtype=torch.long),
                 scaling_factor=scaling_factor, shift_factor=shift_factor)
    return batch


def data_signature(path: str | None) -> list:
    """Identity of a local dataset (every file's name, size and modification time; a rebuilt or
    edited dataset changes it) or the path / hub id itself."""
    if path is None:
        return [None]
    folder = Path(path).expanduser()
    if folder.is_file():
        return [path, folder.stat().st_size, int(folder.stat().st_mtime)]
    if not folder.is_dir():
        return [path]
    return [path] + sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
                           for p in folder.rglob("*") if p.is_file())


def cache_complete(folder: Path, key: dict) -> bool:
    """True when `folder` holds a finished cache of `key`; raises CacheKeyMismatch for another key."""
    if not (folder / "cache_key.json").is_file():
        return False
    check_key(folder, key)
    return (folder / "cache_info.json").is_file()
