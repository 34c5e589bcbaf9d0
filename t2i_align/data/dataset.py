"""Torch side of the data: a pair dataset, its collate function, an epoch sampler, the loader.

Determinism is the point of this file. Exact resume needs the same batches and the same
augmentation whatever the worker count and whatever else touched the global RNGs, so:
the sample order comes from (seed, epoch) through an own torch.Generator; each pair's
augmentation from a random.Random seeded by (seed, epoch, index); and the DataLoader gets an
explicit generator, so creating an iterator does not draw from the global torch RNG.
Unreadable images are never fatal: the pair comes back as a skipped item ({"index", "skipped":
why}) and collate_pairs lists it in the batch's "skipped", so the training loop warns once per
row and counts unique rows (a row read again in the next epoch is not counted twice).
"""

from __future__ import annotations

import logging
import os
import random

import torch

from t2i_align.data.images import BadImageError, decode_image
from t2i_align.data.transforms import pair_transform
from t2i_align.errors import InputError

logger = logging.getLogger("t2i_align.data")


class PreferencePairs(torch.utils.data.Dataset):
    """Pairs of a canonical table (see tables.py) as tensors, chosen image first.

    `table` is a `datasets.Dataset` (anything with `column_names` and row-dict indexing) with caption,
    jpg_0, jpg_1, label_0 and optionally caption_0 / caption_1. Rows with label_0 == 0 are
    swapped on read so that "w" is always the preferred image.
    """

    def __init__(self, table, resolution: int, random_crop: bool = True, random_flip: bool = True, seed: int = 0,
                 max_image_pixels: int | None = None):
        self.table = table
        self.max_image_pixels = max_image_pixels
        self.resolution = resolution
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0
        self.has_image_captions = all(c in table.column_names for c in ("caption_0", "caption_1"))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (call before building each epoch's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.table)

    def _rng(self, index: int) -> random.Random:
        # A str seed is hashed with SHA-512 by `random`, so it is stable across processes and
        # independent of PYTHONHASHSEED.
        return random.Random(f"t2i_align:{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index) -> dict:
        """The pair at row `index`, or {"index", "skipped": why} if one of its images is unreadable."""
        index = int(index)
        try:
            found = read_pair(self.table[index], index, self.has_image_captions, self.max_image_pixels)
        except BadImageError as error:
            return {"index": index, "skipped": str(error)}
        image_w, image_l, caption, caption_w, caption_l = found
        item = pair_transform(image_w, image_l, self.resolution, self.random_crop, self.random_flip,
                              self._rng(index))
        item.update(caption=caption, caption_w=caption_w, caption_l=caption_l, index=index)
        return item


def read_pair(row: dict, index: int, image_captions: bool, max_pixels: int | None = None):
    """(image_w, image_l, caption, caption_w, caption_l) of a table row with the preferred image
    first (label_0 < 0.5 swaps images and per-image captions). Raises BadImageError, naming the
    row (its source_row, the number in the user's table, when the table has one) and column, if
    an image is unreadable or has more than `max_pixels` pixels. Without `image_captions` both
    images get the shared caption."""
    caption = row["caption"]
    captions = (row["caption_0"], row["caption_1"]) if image_captions else (caption, caption)
    columns = ("jpg_0", "jpg_1")
    if row["label_0"] < 0.5:  # jpg_1 preferred: put it first
        columns, captions = columns[::-1], captions[::-1]
    source_row = row.get("source_row", index)
    image_w = decode_image(row[columns[0]], where=f"row {source_row}, column {columns[0]}", max_pixels=max_pixels)
    image_l = decode_image(row[columns[1]], where=f"row {source_row}, column {columns[1]}", max_pixels=max_pixels)
    return image_w, image_l, caption, captions[0], captions[1]


def split_skipped(items: list) -> tuple[list, list]:
    """(good items, [(index, why)] of the skipped ones) of a batch's items."""
    good = [item for item in items if "skipped" not in item]
    return good, [(item["index"], item["skipped"]) for item in items if "skipped" in item]


def collate_pairs(items: list) -> dict:
    """Stack the good pairs of a batch; list the skipped (unreadable) ones.

    Returns {"pixels_w", "pixels_l": [B, 3, R, R], "captions", "captions_w", "captions_l":
    lists of str, "original_sizes_w", "original_sizes_l", "crop_top_left": long [B, 2],
    "indices": long [B], "skipped": [(dataset index, why)], "num_skipped": int, "size": B}.
    When every pair was bad, only "size" (0), "skipped", "num_skipped" and the empty caption
    lists are present.
    """
    good, skipped = split_skipped(items)
    batch = {
        "size": len(good),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "captions": [item["caption"] for item in good],
        "captions_w": [item["caption_w"] for item in good],
        "captions_l": [item["caption_l"] for item in good],
    }
    if not good:
        return batch
    batch.update(
        pixels_w=torch.stack([item["pixels_w"] for item in good]),
        pixels_l=torch.stack([item["pixels_l"] for item in good]),
        original_sizes_w=torch.tensor([item["original_size_w"] for item in good], dtype=torch.long),
        original_sizes_l=torch.tensor([item["original_size_l"] for item in good], dtype=torch.long),
        crop_top_left=torch.tensor([item["crop_top_left"] for item in good], dtype=torch.long),
        indices=torch.tensor([item["index"] for item in good], dtype=torch.long),
    )
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """Indices of `dataset` in an order fixed by (seed, epoch): a permutation from a private
    torch.Generator seeded with seed + epoch when `shuffle`, else 0..N-1. No global RNG use.

    `multiple_of` (the global batch: per-device batch x processes) cuts each epoch to a whole
    number of global batches. accelerate deals the batches out to the processes in turn and
    would otherwise pad a short last round with batches from the epoch's start (duplicates);
    cut here, N processes see exactly the batches one process would with an N-times larger batch."""

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True, multiple_of: int = 1):
        self.total = len(dataset)
        self.num_samples = self.total // multiple_of * multiple_of
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.total, generator=generator)[:self.num_samples].tolist())


def build_dataloader(
    dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    prefetch_factor: int | None = None,
    collate_fn=collate_pairs,
    pin_memory: bool = False,
    num_processes: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with an EpochSampler and `collate_fn` (collate_pairs; the latent
    cache passes its own).

    Before each epoch call `loader.sampler.set_epoch(e)` and `dataset.set_epoch(e)`. Workers
    are not persistent, so each epoch's workers get the dataset with the current epoch.
    `prefetch_factor` only applies with workers and is ignored when num_workers == 0.
    `num_workers` is capped at the cores this process may use (its CPU affinity divided by the
    processes on this machine, LOCAL_WORLD_SIZE), with a log line saying so: more workers than
    cores only compete with the training thread.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    global_batch = batch_size * num_processes
    if drop_last and len(dataset) < global_batch:
        raise InputError(
            f"the dataset has {len(dataset)} pairs, fewer than the global batch {global_batch} (batch_size "
            f"{batch_size} x {num_processes} processes): with drop_last there would be no batch at all; "
            "lower the batch size or add data"
        )
    num_workers = capped_workers(num_workers)
    generator = torch.Generator()
    generator.manual_seed(seed)  # DataLoader draws its worker base seed from here, not the global RNG
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor is not None else {}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, seed=seed, shuffle=shuffle, multiple_of=global_batch if drop_last else 1),
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
        generator=generator,
        **extra,
    )


def capped_workers(num_workers: int) -> int:
    """`num_workers`, at most the cores available to this process (see build_dataloader)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if num_workers > per_process:
        logger.info("data.num_workers=%d capped to %d (the cores available to this process)", num_workers,
                    per_process)
        return per_process
    return num_workers
