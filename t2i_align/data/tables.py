"""Load preference pairs into a HF `datasets.Dataset` with normalised column names.

Whatever the source (Pick-a-Pic v2 on disk / parquet / hub, a JSONL file of image paths, or
the generated offline set), the result has the same columns:

    caption   the prompt (str)
    jpg_0     first image, undecoded (encoded bytes, {"bytes", "path"} dict or file path)
    jpg_1     second image, likewise
    label_0   1.0 if jpg_0 is preferred, 0.0 if jpg_1 is, 0.5 for a tie
    caption_0 / caption_1   per-image captions, only when the source has them

Images are not decoded and the chosen-first swap is not done here: both happen lazily, per
row, in `PreferencePairs`, so loading 850k Pick-a-Pic pairs costs a scan of one label column.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from t2i_align.data.generated import generated_pairs_table
from t2i_align.data.jsonl_pairs import read_jsonl_pairs

logger = logging.getLogger("t2i_align.data")

SOURCES = ("pickapic", "jsonl", "generated")
PER_IMAGE_CAPTIONS = ("caption_0", "caption_1")
TIE = 0.5


class MissingColumnError(ValueError):
    """The table lacks a column the loader was told to use; the message says which and how to fix it."""


# ----------------------------------------------------------------------------- column checks


def _check_columns(found: list[str], where: str, caption_column: str, image_columns, label_column: str,
                   image_caption_columns=None) -> None:
    """Raise MissingColumnError naming each missing column, the columns found and the config key."""
    if len(image_columns) != 2 or image_columns[0] == image_columns[1]:
        raise ValueError(f"data.image_columns must name two different columns, got {list(image_columns)}")
    wanted = [(caption_column, "data.caption_column"), (image_columns[0], "data.image_columns"),
              (image_columns[1], "data.image_columns"), (label_column, "data.label_column")]
    if image_caption_columns:
        if len(image_caption_columns) != 2:
            raise ValueError(f"data.image_caption_columns must name two columns, got {list(image_caption_columns)}")
        wanted += [(name, "data.image_caption_columns") for name in image_caption_columns]
    missing = [(name, key) for name, key in wanted if name not in found]
    if missing:
        listed = ", ".join(f"{name!r} (set {key})" for name, key in missing)
        raise MissingColumnError(
            f"{where}: missing column(s) {listed}; columns found: {sorted(found)}. "
            f"Point the config key(s) at the matching column names of this table."
        )


# ----------------------------------------------------------------------------- pickapic sources


def _parquet_files(path: str, split: str) -> list[str] | None:
    """Parquet files named by `path` (file, folder or glob), or None if `path` is none of these.

    For a folder, files of the requested split are preferred when the names show splits
    (hub snapshots: data/train-00000-of-00645.parquet, or a train/ sub-folder); otherwise
    every parquet file in the folder is used.
    """
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"no files match the pattern {path!r}")
        return files
    local = Path(path)
    if local.is_file():
        return [str(local)]
    if local.is_dir():
        files = sorted(local.rglob("*.parquet"))
        if not files:
            return None
        pattern = re.compile(rf"^{re.escape(split)}(-|\.parquet$)")
        of_split = [f for f in files if pattern.match(f.name) or f.parent.name == split]
        return [str(f) for f in (of_split or files)]
    return None


def _is_saved_dataset(folder: Path) -> bool:
    """True for a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _load_saved(folder: Path, split: str) -> datasets.Dataset:
    """A save_to_disk folder; for a DatasetDict take `split`."""
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{folder}: no split {split!r} (data.split); splits found: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_parquet(files: list[str], where: str, caption_column, image_columns, label_column,
                  image_caption_columns=None) -> datasets.Dataset:
    """Parquet files, checked against their schema first and read with only the needed columns."""
    try:
        found = pq.read_schema(files[0]).names
    except Exception as error:
        raise ValueError(f"{files[0]}: cannot read parquet schema: {error}") from error
    _check_columns(found, where, caption_column, image_columns, label_column, image_caption_columns)
    wanted = list(dict.fromkeys([caption_column, *image_columns, label_column, *(image_caption_columns or ())]))
    wanted += [name for name in PER_IMAGE_CAPTIONS if name in found and name not in wanted]
    return datasets.Dataset.from_parquet(files, columns=wanted, split="train")


def _looks_local(path: str) -> bool:
    """Paths that can only mean a local file, never a hub id like 'owner/name'."""
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
            or path.endswith((".parquet", ".arrow", ".jsonl", ".json")))


def _load_pickapic(path, split, caption_column, image_columns, label_column,
                   image_caption_columns=None) -> tuple[datasets.Dataset, str]:
    """Dispatch a Pick-a-Pic-schema source: save_to_disk folder, parquet, else a hub dataset."""
    if not path:
        raise ValueError("data.path must be set for source 'pickapic' (a save_to_disk folder, parquet file / "
                         "folder / glob, or a hub dataset name such as yuvalkirstain/pickapic_v2)")
    expanded = os.path.expanduser(path)
    if Path(expanded).is_dir() and _is_saved_dataset(Path(expanded)):
        return _load_saved(Path(expanded), split), expanded
    files = _parquet_files(expanded, split)
    if files is not None:
        where = expanded if len(files) == 1 else f"{expanded} ({len(files)} parquet files)"
        return _load_parquet(files, where, caption_column, image_columns, label_column,
                             image_caption_columns), where
    if os.path.exists(expanded):
        raise ValueError(f"{expanded}: neither a save_to_disk folder nor parquet file(s)")
    if _looks_local(path):
        raise FileNotFoundError(f"data.path {path!r} does not exist")
    try:  # only reached for a name that is not a local path: a hub dataset id
        return datasets.load_dataset(path, split=split), f"hub dataset {path} (split {split})"
    except Exception as error:
        raise FileNotFoundError(
            f"data.path {path!r} is not a local file or folder, and loading it as a hub dataset failed: "
            f"{type(error).__name__}: {error}"
        ) from error


# ----------------------------------------------------------------------------- normalising


def _preference_to_image_order(labels, chosen, rejected) -> dict:
    """(chosen, rejected) captions -> captions of (jpg_0, jpg_1): jpg_1 is the chosen one when
    label_0 == 0 (ties keep image order, jpg_0 counting as chosen)."""
    first = [r if label == 0 else c for label, c, r in zip(labels, chosen, rejected)]
    second = [c if label == 0 else r for label, c, r in zip(labels, chosen, rejected)]
    return {"caption_0": first, "caption_1": second}


def _keep_non_ties(labels: list) -> list[bool]:
    return [label != TIE for label in labels]


def _canonical(table: datasets.Dataset, caption_column, image_columns, label_column,
               image_caption_columns=None) -> datasets.Dataset:
    """Keep the needed columns under canonical names; leave image columns undecoded."""
    mapping = {caption_column: "caption", image_columns[0]: "jpg_0", image_columns[1]: "jpg_1",
               label_column: "label_0"}
    for source, new in zip(image_caption_columns or (), ("caption_0", "caption_1")):
        if source in mapping:  # one column fills two canonical names (e.g. caption and caption_0): copy it
            copy = f"__t2i_copy_{new}"
            table = table.add_column(copy, list(table[source]))
            mapping[copy] = new
        else:
            mapping[source] = new
    keep = list(mapping) + [c for c in PER_IMAGE_CAPTIONS if c in table.column_names and c not in mapping
                            and c not in mapping.values()]
    table = table.select_columns(keep)
    # Rename through temporary names so overlapping choices (e.g. image_columns=("jpg_1", "jpg_0"))
    # cannot collide with an existing column.
    table = table.rename_columns({old: f"__t2i_{new}" for old, new in mapping.items()})
    table = table.rename_columns({f"__t2i_{new}": new for new in mapping.values()})
    for column in ("jpg_0", "jpg_1"):
        if isinstance(table.features[column], datasets.Image) and table.features[column].decode:
            table = table.cast_column(column, datasets.Image(decode=False))
    return table


def load_pair_table(
    source: str,
    path: str | None,
    split: str = "train",
    caption_column: str = "caption",
    image_columns: tuple[str, str] = ("jpg_0", "jpg_1"),
    label_column: str = "label_0",
    drop_ties: bool = True,
    max_pairs: int | None = None,
    num_generated: int = 64,
    seed: int = 0,
    image_caption_columns: tuple[str, str] | None = None,
    image_caption_order: str = "image",
) -> datasets.Dataset:
    """Load preference pairs with canonical columns caption, jpg_0, jpg_1, label_0 (+ caption_0/1).

    source "pickapic": `path` is a save_to_disk folder (Dataset, or DatasetDict -> `split`),
    a parquet file / folder / glob, or else a hub dataset name (then datasets.load_dataset).
    The column arguments name the table's columns. source "jsonl": a JSONL file of
    {"prompt", "chosen", "rejected"} lines (see jsonl_pairs.py). source "generated": the
    offline set of `num_generated` pairs from `seed`; `path` is ignored. For "jsonl" and
    "generated" the column arguments are ignored (those tables are built canonical).

    Per-image captions (DCPO): `image_caption_columns` names two columns that become caption_0
    / caption_1; with image_caption_order "image" they follow jpg_0 / jpg_1 (DCPO's caption_0 /
    caption_1), with "preference" they are (chosen caption, rejected caption) and are put into
    image order here, so the chosen-first swap later moves them with their images. Without
    it, columns named caption_0 / caption_1 are kept when present.

    Columns are checked before anything else. `drop_ties` removes label 0.5 rows by scanning
    the label column only; `max_pairs` then keeps the first N rows.
    """
    if image_caption_order not in ("image", "preference"):
        raise ValueError(f"data.image_caption_order must be 'image' or 'preference', got {image_caption_order!r}")
    image_caption_columns = tuple(image_caption_columns) if image_caption_columns else None
    if source == "generated":
        table, where = generated_pairs_table(num_pairs=num_generated, seed=seed), f"generated pairs (seed {seed})"
        caption_column, image_columns, label_column = "caption", ("jpg_0", "jpg_1"), "label_0"
    elif source == "jsonl":
        if not path:
            raise ValueError("data.path must be set to a .jsonl file for source 'jsonl'")
        table, where = read_jsonl_pairs(path), str(path)
        caption_column, image_columns, label_column = "caption", ("jpg_0", "jpg_1"), "label_0"
    elif source == "pickapic":
        table, where = _load_pickapic(path, split, caption_column, tuple(image_columns), label_column,
                                      image_caption_columns)
    else:
        raise ValueError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"data.max_pairs must be a positive number or null, got {max_pairs}")

    image_columns = tuple(image_columns)
    _check_columns(table.column_names, where, caption_column, image_columns, label_column, image_caption_columns)
    table = _canonical(table, caption_column, image_columns, label_column, image_caption_columns)
    if image_caption_columns and image_caption_order == "preference":
        table = table.map(_preference_to_image_order, input_columns=["label_0", "caption_0", "caption_1"],
                          batched=True, keep_in_memory=True, desc="Ordering captions")

    loaded = len(table)
    if drop_ties:
        table = table.filter(_keep_non_ties, input_columns=["label_0"], batched=True,
                             keep_in_memory=True, desc="Dropping ties")
    ties = loaded - len(table)
    if max_pairs is not None and len(table) > max_pairs:
        table = table.select(range(max_pairs))
    logger.info("loaded %d pairs from %s; dropped %d ties; using %d pairs", loaded, where, ties, len(table))
    if len(table) == 0:
        raise ValueError(f"{where}: no pairs left after dropping {ties} ties (of {loaded} rows)")
    return table
