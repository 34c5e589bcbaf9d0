"""Load preference pairs into a HF `datasets.Dataset` with normalised column names.

Whatever the source (Pick-a-Pic v2 on disk / parquet / hub, a JSONL file of image paths, or
the generated offline set), the result has the same columns:

    caption   the prompt (str)
    jpg_0     first image, undecoded (encoded bytes, {"bytes", "path"} dict or file path)
    jpg_1     second image, likewise
    label_0   1.0 if jpg_0 is preferred, 0.0 if jpg_1 is, 0.5 for a tie (any number in
              [0, 1]: above 0.5 prefers jpg_0, below 0.5 prefers jpg_1)
    caption_0 / caption_1   per-image captions, only when the source has them
    source_row   the row's number in the source table (0-based), so warnings name the row the
              user can find in their own file, whatever was dropped before it

Every row is validated here, before training starts (`invalid_rows`): a row whose caption is
null, not text or blank, or whose label is null, not a number, NaN / infinite or outside [0, 1],
is dropped and counted per reason, and the first row numbers of each reason are logged. Ties
(0.5) are a separate count. What passes cannot fail a step: captions are text (very long ones
are truncated by the tokenizer, any Unicode is fine) and labels order the pair.

Images are not decoded and the chosen-first swap is not done here: both happen lazily, per
row, in `PreferencePairs` (unreadable images are skipped there and counted once per row), so
loading 850k Pick-a-Pic pairs costs a scan of the caption and label columns.
"""

from __future__ import annotations

import glob
import logging
import math
import numbers
import os
import re
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from t2i_align.data.generated import generated_pairs_table
from t2i_align.data.jsonl_pairs import read_jsonl_pairs
from t2i_align.errors import InputError, InputNotFoundError

logger = logging.getLogger("t2i_align.data")

SOURCES = ("pickapic", "jsonl", "generated")
PER_IMAGE_CAPTIONS = ("caption_0", "caption_1")
TIE = 0.5
# Why a row is dropped at load (the key is what training_info.json and the log use).
DROP_REASONS = {
    "caption_missing": "caption is null or not text",
    "caption_blank": "caption is empty or only whitespace",
    "image_caption_missing": "a per-image caption (caption_0 / caption_1) is null or not text",
    "image_caption_blank": "a per-image caption (caption_0 / caption_1) is empty",
    "label_missing": "label is null",
    "label_not_a_number": "label is not a number",
    "label_not_finite": "label is NaN or infinite",
    "label_out_of_range": "label is outside [0, 1]",
}
EXAMPLES_PER_REASON = 5


class MissingColumnError(InputError):
    """The table lacks a column the loader was told to use; the message says which and how to fix it."""


# ----------------------------------------------------------------------------- column checks


def _check_columns(found: list[str], where: str, caption_column: str, image_columns, label_column: str,
                   image_caption_columns=None) -> None:
    """Raise MissingColumnError naming each missing column, the columns found and the config key."""
    if len(image_columns) != 2 or image_columns[0] == image_columns[1]:
        raise InputError(f"data.image_columns must name two different columns, got {list(image_columns)}")
    wanted = [(caption_column, "data.caption_column"), (image_columns[0], "data.image_columns"),
              (image_columns[1], "data.image_columns"), (label_column, "data.label_column")]
    if image_caption_columns:
        if len(image_caption_columns) != 2:
            raise InputError(f"data.image_caption_columns must name two columns, got {list(image_caption_columns)}")
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
            raise InputNotFoundError(f"no files match the pattern {path!r}")
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
            raise InputError(f"{folder}: no split {split!r} (data.split); splits found: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_parquet(files: list[str], where: str, caption_column, image_columns, label_column,
                  image_caption_columns=None) -> datasets.Dataset:
    """Parquet files, checked against their schema first and read with only the needed columns."""
    try:
        found = pq.read_schema(files[0]).names
    except Exception as error:
        raise InputError(f"{files[0]}: cannot read parquet schema: {error}") from error
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
        raise InputError("data.path must be set for source 'pickapic' (a save_to_disk folder, parquet file / "
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
        raise InputError(f"{expanded}: neither a save_to_disk folder nor parquet file(s)")
    if _looks_local(path):
        raise InputNotFoundError(f"data.path {path!r} does not exist")
    try:  # only reached for a name that is not a local path: a hub dataset id
        return datasets.load_dataset(path, split=split), f"hub dataset {path} (split {split})"
    except Exception as error:
        raise InputNotFoundError(
            f"data.path {path!r} is not a local file or folder, and loading it as a hub dataset failed: "
            f"{type(error).__name__}: {error}"
        ) from error


# ----------------------------------------------------------------------------- normalising


def _preference_to_image_order(labels, chosen, rejected) -> dict:
    """(chosen, rejected) captions -> captions of (jpg_0, jpg_1): jpg_1 is the chosen one when
    label_0 < 0.5 (ties keep image order, jpg_0 counting as chosen)."""
    first = [r if label < TIE else c for label, c, r in zip(labels, chosen, rejected)]
    second = [c if label < TIE else r for label, c, r in zip(labels, chosen, rejected)]
    return {"caption_0": first, "caption_1": second}


def _caption_problem(value, missing: str, blank: str) -> str | None:
    if not isinstance(value, str):
        return missing
    return blank if not value.strip() else None


def _label_problem(value) -> str | None:
    if value is None:
        return "label_missing"
    if not isinstance(value, numbers.Real):  # bool is a Real (True = 1.0): accepted
        return "label_not_a_number"
    if not math.isfinite(value):
        return "label_not_finite"
    return None if 0.0 <= value <= 1.0 else "label_out_of_range"


def invalid_rows(table: datasets.Dataset, image_captions: bool = False,
                 batch_size: int = 65536) -> dict[int, str]:
    """{row index: reason (a DROP_REASONS key)} of the rows of a canonical table that cannot be
    trained on. Reads only the caption and label columns (and caption_0 / caption_1 when
    `image_captions`), in batches; images are not touched."""
    columns = ["caption", "label_0"] + (list(PER_IMAGE_CAPTIONS) if image_captions else [])
    bad = {}
    for start, batch in zip(range(0, len(table), batch_size),
                            table.select_columns(columns).iter(batch_size=batch_size)):
        for j in range(len(batch["caption"])):
            reason = _caption_problem(batch["caption"][j], "caption_missing", "caption_blank")
            if reason is None and image_captions:
                for column in PER_IMAGE_CAPTIONS:
                    reason = reason or _caption_problem(batch[column][j], "image_caption_missing",
                                                        "image_caption_blank")
            reason = reason or _label_problem(batch["label_0"][j])
            if reason is not None:
                bad[start + j] = reason
    return bad


def describe_drops(dropped: dict[str, int], examples: dict[str, list[int]]) -> str:
    """'caption is null or not text: 2 (rows 3, 9); label is NaN or infinite: 1 (row 4)'."""
    parts = []
    for reason, count in dropped.items():
        rows = examples.get(reason, [])
        listed = ", ".join(str(r) for r in rows) + (", ..." if count > len(rows) else "")
        parts.append(f"{DROP_REASONS[reason]}: {count} (row{'s' if count > 1 else ''} {listed})")
    return "; ".join(parts)


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


def load_pair_table(*args, **kwargs) -> datasets.Dataset:
    """load_pairs without its summary."""
    return load_pairs(*args, **kwargs)[0]


def load_pairs(
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
    require_image_captions: bool = False,
) -> tuple[datasets.Dataset, dict]:
    """Load and validate preference pairs: (table, summary). The table has the canonical columns
    caption, jpg_0, jpg_1, label_0 (+ caption_0/1) and source_row.

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

    Columns are checked before anything else; then every row is validated (`invalid_rows`;
    per-image captions too with `require_image_captions`) and the bad ones dropped. `drop_ties`
    removes label 0.5 rows by scanning the label column only; `max_pairs` then keeps the first N
    rows. The summary says what happened: {"source", "rows", "dropped" {reason: count},
    "dropped_examples" {reason: [source rows]}, "ties", "cut_by_max_pairs", "used"}. A table with
    no usable pair left raises InputError naming the source and the reasons.
    """
    if image_caption_order not in ("image", "preference"):
        raise InputError(f"data.image_caption_order must be 'image' or 'preference', got {image_caption_order!r}")
    image_caption_columns = tuple(image_caption_columns) if image_caption_columns else None
    if source == "generated":
        table, where = generated_pairs_table(num_pairs=num_generated, seed=seed), f"generated pairs (seed {seed})"
        caption_column, image_columns, label_column = "caption", ("jpg_0", "jpg_1"), "label_0"
    elif source == "jsonl":
        if not path:
            raise InputError("data.path must be set to a .jsonl file for source 'jsonl'")
        table, where = read_jsonl_pairs(path), str(path)
        caption_column, image_columns, label_column = "caption", ("jpg_0", "jpg_1"), "label_0"
    elif source == "pickapic":
        table, where = _load_pickapic(path, split, caption_column, tuple(image_columns), label_column,
                                      image_caption_columns)
    else:
        raise InputError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}")
    if max_pairs is not None and max_pairs < 1:
        raise InputError(f"data.max_pairs must be a positive number or null, got {max_pairs}")

    image_columns = tuple(image_columns)
    _check_columns(table.column_names, where, caption_column, image_columns, label_column, image_caption_columns)
    table = _canonical(table, caption_column, image_columns, label_column, image_caption_columns)
    loaded = len(table)
    table = table.add_column("source_row", list(range(loaded)))
    check_image_captions = require_image_captions and set(PER_IMAGE_CAPTIONS) <= set(table.column_names)
    bad = invalid_rows(table, image_captions=check_image_captions)
    dropped = dict(sorted(Counter(bad.values()).items(), key=lambda item: list(DROP_REASONS).index(item[0])))
    examples = {reason: [row for row, r in bad.items() if r == reason][:EXAMPLES_PER_REASON] for reason in dropped}
    if bad:
        logger.warning("%s: %d of %d rows dropped at load: %s", where, len(bad), loaded,
                       describe_drops(dropped, examples))
    # One scan of the (valid) labels for the ties, then one select for both.
    ties = set()
    if drop_ties:
        labels = table["label_0"] if loaded else []
        ties = {i for i, label in enumerate(labels) if i not in bad and label == TIE}
    keep = [i for i in range(loaded) if i not in bad and i not in ties]
    cut = 0
    if max_pairs is not None and len(keep) > max_pairs:
        cut = len(keep) - max_pairs
        keep = keep[:max_pairs]
    if len(keep) < loaded:
        table = table.select(keep)
    if image_caption_columns and image_caption_order == "preference":
        table = table.map(_preference_to_image_order, input_columns=["label_0", "caption_0", "caption_1"],
                          batched=True, keep_in_memory=True, desc="Ordering captions")
    ties = len(ties)
    order = [c for c in ("caption", "jpg_0", "jpg_1", "label_0", *PER_IMAGE_CAPTIONS, "source_row")
             if c in table.column_names]
    if table.column_names != order:
        table = table.select_columns(order)
    summary = {"source": where, "rows": loaded, "dropped": dropped, "dropped_examples": examples,
               "ties": ties, "cut_by_max_pairs": cut, "used": len(table)}
    logger.info("%s: %d rows; %d dropped as invalid, %d ties dropped%s; using %d pairs", where, loaded, len(bad),
                ties, f", {cut} beyond data.max_pairs={max_pairs}" if cut else "", len(table))
    if len(table) == 0:
        why = f"{len(bad)} invalid ({describe_drops(dropped, examples)})" if bad else "0 invalid"
        raise InputError(f"{where}: no pairs to train on: {loaded} rows, {why}, {ties} ties dropped "
                         "(data.drop_ties)")
    return table, summary
