"""load_pair_table: save_to_disk / parquet / glob sources, tie dropping, column checks."""

from __future__ import annotations

import logging

import datasets
import pytest

from t2i_align.data.tables import MissingColumnError, load_pair_table
from tests.data.helpers import LABELS, pickapic_rows

CANONICAL = ["caption", "jpg_0", "jpg_1", "label_0"]
NON_TIES = [i for i, label in enumerate(LABELS) if label != 0.5]


def _assert_canonical(table, expected_rows):
    assert table.column_names == CANONICAL + ["source_row"]
    assert table["caption"] == [f"prompt {i}" for i in expected_rows]
    assert isinstance(table[0]["jpg_0"], bytes)  # not decoded


def test_save_to_disk_dataset_and_dataset_dict(tmp_path, pickapic_table):
    pickapic_table.save_to_disk(str(tmp_path / "single"))
    _assert_canonical(load_pair_table("pickapic", str(tmp_path / "single")), NON_TIES)

    datasets.DatasetDict({"train": pickapic_table, "test": pickapic_table.select([0, 1])}).save_to_disk(
        str(tmp_path / "dict"))
    _assert_canonical(load_pair_table("pickapic", str(tmp_path / "dict"), split="test"), [0, 1])
    with pytest.raises(ValueError, match="no split 'validation'.*'test', 'train'"):
        load_pair_table("pickapic", str(tmp_path / "dict"), split="validation")


def test_parquet_file_folder_and_glob(tmp_path, pickapic_table):
    folder = tmp_path / "snapshot" / "data"
    folder.mkdir(parents=True)
    pickapic_table.select(range(4)).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    pickapic_table.select(range(4, 8)).to_parquet(str(folder / "train-00001-of-00002.parquet"))
    pickapic_table.select([0]).to_parquet(str(folder / "validation_unique-00000-of-00001.parquet"))

    _assert_canonical(load_pair_table("pickapic", str(folder / "train-00000-of-00002.parquet")), [0, 1, 3])
    # a folder with split-named files: only the requested split is read
    _assert_canonical(load_pair_table("pickapic", str(tmp_path / "snapshot")), NON_TIES)
    _assert_canonical(load_pair_table("pickapic", str(tmp_path / "snapshot"), split="validation_unique",
                                      drop_ties=False), [0])
    _assert_canonical(load_pair_table("pickapic", str(folder / "train-*.parquet")), NON_TIES)


def test_ties_dropped_counted_and_max_pairs(pickapic_table, tmp_path, caplog):
    pickapic_table.save_to_disk(str(tmp_path / "d"))
    with caplog.at_level(logging.INFO, logger="t2i_align.data"):
        table = load_pair_table("pickapic", str(tmp_path / "d"))
    assert len(table) == len(NON_TIES) and 0.5 not in table["label_0"]
    assert "8 rows; 0 dropped as invalid, 2 ties dropped; using 6 pairs" in caplog.text
    # label_0 is kept as is: the swap happens lazily in the torch dataset
    assert table["label_0"] == [LABELS[i] for i in NON_TIES]

    kept = load_pair_table("pickapic", str(tmp_path / "d"), drop_ties=False, max_pairs=3)
    assert kept["label_0"] == LABELS[:3]
    assert len(load_pair_table("pickapic", str(tmp_path / "d"), max_pairs=2)) == 2


def test_custom_column_names_and_per_image_captions(tmp_path):
    rows = pickapic_rows()
    columns = {"prompt": rows["caption"], "img_a": rows["jpg_0"], "img_b": rows["jpg_1"], "pref": rows["label_0"],
               "caption": ["unrelated"] * 8,  # clashes with a canonical name and must be dropped
               "caption_0": [f"c0 {i}" for i in range(8)], "caption_1": [f"c1 {i}" for i in range(8)]}
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "p.parquet"))
    table = load_pair_table("pickapic", str(tmp_path / "p.parquet"), caption_column="prompt",
                            image_columns=("img_a", "img_b"), label_column="pref", drop_ties=False)
    assert table.column_names == CANONICAL + ["caption_0", "caption_1", "source_row"]
    assert table[1]["caption"] == "prompt 1" and table[1]["caption_1"] == "c1 1"
    assert table[1]["jpg_0"] == rows["jpg_0"][1]


def test_swapped_image_column_names(tmp_path, pickapic_table):
    pickapic_table.save_to_disk(str(tmp_path / "d"))
    table = load_pair_table("pickapic", str(tmp_path / "d"), image_columns=("jpg_1", "jpg_0"),
                            label_column="label_1", drop_ties=False)
    assert table[0]["jpg_0"] == pickapic_table[0]["jpg_1"] and table[0]["label_0"] == 0.0


def test_image_feature_columns_stay_undecoded(tmp_path, pickapic_table):
    table = pickapic_table.cast_column("jpg_0", datasets.Image()).cast_column("jpg_1", datasets.Image())
    table.save_to_disk(str(tmp_path / "d"))
    row = load_pair_table("pickapic", str(tmp_path / "d"))[0]
    assert isinstance(row["jpg_0"], dict) and row["jpg_0"]["bytes"]


def test_missing_column_is_reported_before_loading(tmp_path, pickapic_table):
    pickapic_table.remove_columns(["jpg_1"]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(MissingColumnError) as info:
        load_pair_table("pickapic", str(tmp_path / "p.parquet"), caption_column="prompt")
    message = str(info.value)
    assert "'prompt'" in message and "'jpg_1'" in message
    assert "data.caption_column" in message and "data.image_columns" in message
    assert "p.parquet" in message and "'caption'" in message and "'ranking_id'" in message  # columns found
    assert not (tmp_path / "hf_cache").exists() or not any((tmp_path / "hf_cache").rglob("*.arrow"))


def test_bad_sources_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown data.source 'webdataset'.*pickapic.*jsonl.*generated"):
        load_pair_table("webdataset", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pair_table("pickapic", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        load_pair_table("pickapic", str(tmp_path / "*.parquet"))
    with pytest.raises(ValueError, match="data.path must be set"):
        load_pair_table("pickapic", None)


def test_generated_source_drops_ties():
    table = load_pair_table("generated", None, num_generated=32, seed=3)
    assert table.column_names == CANONICAL + ["caption_0", "caption_1", "source_row"]
    assert len(table) == 30 and 0.5 not in table["label_0"]


# ----------------------------------------------------------------------------- per-image captions (DCPO)


def _with_captions(rows: dict, first: str, second: str) -> dict:
    rows = dict(rows)
    rows[first] = [f"image-0 caption {i}" for i in range(len(rows["caption"]))]
    rows[second] = [f"image-1 caption {i}" for i in range(len(rows["caption"]))]
    return rows


def test_image_caption_columns_follow_image_order(tmp_path):
    from tests.data.helpers import pickapic_rows

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(_with_captions(pickapic_rows(), "cap_a", "cap_b")).save_to_disk(str(folder))
    table = load_pair_table("pickapic", str(folder), image_caption_columns=("cap_a", "cap_b"), drop_ties=False)
    assert table[0]["caption_0"] == "image-0 caption 0" and table[1]["caption_1"] == "image-1 caption 1"


def test_image_caption_columns_in_preference_order_are_put_in_image_order(tmp_path):
    from tests.data.helpers import LABELS, pickapic_rows

    rows = pickapic_rows()
    n = len(rows["caption"])
    rows["chosen_caption"] = [f"chosen {i}" for i in range(n)]
    rows["rejected_caption"] = [f"rejected {i}" for i in range(n)]
    files = tmp_path / "pairs.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(files))
    table = load_pair_table("pickapic", str(files), drop_ties=False, image_caption_order="preference",
                            image_caption_columns=("chosen_caption", "rejected_caption"))
    for i, label in enumerate(LABELS):
        want_0 = f"rejected {i}" if label == 0 else f"chosen {i}"
        assert table[i]["caption_0"] == want_0
    # and the dataset's chosen-first swap then hands the chosen caption to the chosen image
    from t2i_align.data.dataset import PreferencePairs

    pairs = PreferencePairs(table, resolution=8, random_crop=False, random_flip=False)
    for i in range(n):
        assert pairs[i]["caption_w"] == f"chosen {i}" and pairs[i]["caption_l"] == f"rejected {i}"


def test_missing_image_caption_column_is_named(tmp_path):
    from tests.data.helpers import pickapic_rows

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(pickapic_rows()).save_to_disk(str(folder))
    with pytest.raises(MissingColumnError, match="caption_0.*data.image_caption_columns"):
        load_pair_table("pickapic", str(folder), image_caption_columns=("caption_0", "caption_1"))


@pytest.mark.parametrize("save", ["parquet", "save_to_disk"])
def test_caption_column_can_also_be_a_per_image_caption(tmp_path, save):
    """The toy DCPO set: the chosen image keeps the shared prompt (caption_column = its per-image
    caption column), the rejected one has its own column."""
    rows = pickapic_rows()
    n = len(rows["caption"])
    rows["rejected_prompt"] = [f"plain style: prompt {i}" for i in range(n)]
    if save == "parquet":
        path = tmp_path / "pairs.parquet"
        datasets.Dataset.from_dict(rows).to_parquet(str(path))
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    table = load_pair_table("pickapic", str(path), drop_ties=False, image_caption_order="preference",
                            image_caption_columns=("caption", "rejected_prompt"))
    assert table.column_names == CANONICAL + ["caption_0", "caption_1", "source_row"]
    assert table["caption"] == [f"prompt {i}" for i in range(n)]
    for i, label in enumerate(LABELS):
        chosen, rejected = f"prompt {i}", f"plain style: prompt {i}"
        assert (table[i]["caption_0"], table[i]["caption_1"]) == ((rejected, chosen) if label == 0 else (chosen, rejected))
