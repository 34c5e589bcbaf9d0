"""PreferencePairs / collate_pairs / EpochSampler / build_dataloader: chosen first, bad images
skipped and counted, and batches fixed by (seed, epoch) alone."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from t2i_align.data.dataset import EpochSampler, PreferencePairs, build_dataloader, collate_pairs
from t2i_align.data.generated import generated_pairs_table
from t2i_align.data.tables import load_pair_table
from tests.data.helpers import LABELS, colour_of


def _pixel(tensor) -> tuple[int, ...]:
    """The (solid) colour of a [3, R, R] tensor in [-1, 1], as 0..255 ints."""
    return tuple(int(round(v)) for v in ((tensor[:, 0, 0] + 1) * 127.5).tolist())


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    return list(loader)


@pytest.fixture
def pairs_with_captions(pickapic_table):
    table = pickapic_table.add_column("caption_0", [f"first {i}" for i in range(8)])
    table = table.add_column("caption_1", [f"second {i}" for i in range(8)])
    return table


def test_chosen_first_swap_on_pixels_and_captions(pairs_with_captions):
    dataset = PreferencePairs(pairs_with_captions, resolution=8, seed=0)
    for row, label in enumerate(LABELS):
        item = dataset[row]
        chosen, rejected = (1, 0) if label == 0 else (0, 1)  # ties keep the stored order
        assert _pixel(item["pixels_w"]) == colour_of(row, chosen)
        assert _pixel(item["pixels_l"]) == colour_of(row, rejected)
        names = ("first", "second")
        assert item["caption_w"] == f"{names[chosen]} {row}" and item["caption_l"] == f"{names[rejected]} {row}"
        assert item["caption"] == f"prompt {row}" and item["index"] == row
        assert item["original_size_w"] == (16, 24) and item["crop_top_left"][0] == 0


def test_shared_caption_without_per_image_captions(pickapic_table):
    item = PreferencePairs(pickapic_table, resolution=8)[1]
    assert item["caption_w"] == item["caption_l"] == item["caption"] == "prompt 1"


def test_corrupt_image_is_skipped_and_listed_with_its_reason(pickapic_table):
    table = pickapic_table.map(lambda row, i: {"jpg_1": b"garbage" if i == 2 else row["jpg_1"]}, with_indices=True)
    dataset = PreferencePairs(table, resolution=8)
    loader = build_dataloader(dataset, batch_size=4, seed=0, shuffle=False)
    first, second = list(loader)
    (index, why), = first["skipped"]
    assert index == 2 and "row 2, column jpg_1" in why and "UnidentifiedImageError" in why
    assert second["skipped"] == []
    assert first["num_skipped"] == 1 and first["size"] == 3 and second["num_skipped"] == 0
    assert first["indices"].tolist() == [0, 1, 3]
    assert first["pixels_w"].shape == (3, 3, 8, 8) and first["crop_top_left"].shape == (3, 2)
    assert first["original_sizes_w"].dtype == torch.long and first["captions"] == ["prompt 0", "prompt 1", "prompt 3"]
    assert [_pixel(p) for p in first["pixels_w"]] == [colour_of(0, 0), colour_of(1, 1), colour_of(3, 0)]


def test_all_bad_batch():
    batch = collate_pairs([{"index": 4, "skipped": "bad a"}, {"index": 7, "skipped": "bad b"}])
    assert batch["size"] == 0 and batch["num_skipped"] == 2 and batch["captions"] == []
    assert batch["skipped"] == [(4, "bad a"), (7, "bad b")]


def test_same_seed_same_batches_new_epoch_new_order_and_no_global_rng_use():
    table = load_pair_table("generated", None, num_generated=26, seed=5)  # 2 ties -> 24 pairs, 6 full batches
    assert len(table) == 24
    make = lambda: build_dataloader(PreferencePairs(table, resolution=16, seed=3), batch_size=4, seed=3)  # noqa: E731
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    a, b = _epoch(make(), 0), _epoch(make(), 0)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    for batch_a, batch_b in zip(a, b):
        assert torch.equal(batch_a["indices"], batch_b["indices"])
        assert torch.equal(batch_a["pixels_w"], batch_b["pixels_w"])
        assert torch.equal(batch_a["crop_top_left"], batch_b["crop_top_left"])
    loader = make()
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    order = lambda batches: torch.cat([batch["indices"] for batch in batches]).tolist()  # noqa: E731
    assert order(first) == order(a) and order(first) != order(second)
    assert sorted(order(first)) == sorted(order(second)) == list(range(len(table)))
    # the augmentation of one pair depends on the epoch, not on position or global state
    dataset = PreferencePairs(table, resolution=16, seed=3)
    views = set()
    for epoch in range(6):  # square images: the flip is the only augmentation here
        dataset.set_epoch(epoch)
        views.add(dataset[0]["pixels_w"].numpy().tobytes())
    assert len(views) == 2


def test_workers_give_the_same_batches_as_the_main_process():
    table = generated_pairs_table(num_pairs=12, seed=1, size=24)
    dataset = PreferencePairs(table, resolution=16, seed=0)
    main = _epoch(build_dataloader(dataset, batch_size=4, seed=0), 2)
    workers = _epoch(build_dataloader(dataset, batch_size=4, seed=0, num_workers=2, prefetch_factor=2), 2)
    for batch_main, batch_workers in zip(main, workers, strict=True):
        assert torch.equal(batch_main["indices"], batch_workers["indices"])
        assert torch.equal(batch_main["pixels_l"], batch_workers["pixels_l"])


def test_sampler_and_loader_arguments():
    dataset = list(range(10))
    sampler = EpochSampler(dataset, seed=0, shuffle=False)
    assert list(sampler) == list(range(10)) and len(sampler) == 10
    shuffled = EpochSampler(dataset, seed=0)
    assert sorted(shuffled) == list(range(10)) and list(shuffled) == list(shuffled)
    with pytest.raises(ValueError, match=r"fewer than the global batch 16 \(batch_size 16 x 1 processes\)"):
        build_dataloader(dataset, batch_size=16, seed=0)
    with pytest.raises(ValueError, match="global batch 12"):
        build_dataloader(dataset, batch_size=6, seed=0, num_processes=2)


def test_epoch_is_cut_to_whole_global_batches():
    """With N processes accelerate deals batches out in turn; an epoch of whole global batches means
    no process pads its last round with batches from the epoch's start."""
    cut = EpochSampler(list(range(15)), seed=3, multiple_of=4)
    order = list(cut)
    assert len(cut) == len(order) == 12 and len(set(order)) == 12
    assert order == list(EpochSampler(list(range(15)), seed=3))[:12]  # the same permutation, tail dropped
    loader = build_dataloader(list(range(15)), batch_size=2, seed=0, num_processes=2,
                              collate_fn=lambda items: items)
    assert len(loader) == 6  # 3 rounds of 2 processes x 2 pairs
