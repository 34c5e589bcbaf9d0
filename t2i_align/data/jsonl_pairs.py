"""Read preference pairs listed in a JSONL file into a table with the canonical columns.

Each line is {"prompt": str, "chosen": image path, "rejected": image path}, optionally with
"chosen_caption" / "rejected_caption" (per-image captions, as DCPO uses). This is the simplest
way to train on one's own images: no parquet, no hub. Image paths stay strings; they are
decoded lazily by the torch dataset. Relative paths resolve against the JSONL file's folder,
so the file and its images can be moved together.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from t2i_align.errors import InputError, InputNotFoundError

REQUIRED_KEYS = ("prompt", "chosen", "rejected")
CAPTION_KEYS = ("chosen_caption", "rejected_caption")


def _resolve(image_path, folder: Path, where: str, key: str) -> str:
    """Absolute path string for one image entry, relative paths taken from `folder`."""
    if not isinstance(image_path, str) or not image_path:
        raise InputError(f"{where}: key {key!r} must be a non-empty image path string, got {image_path!r}")
    path = Path(image_path).expanduser()
    return str(path if path.is_absolute() else (folder / path))


def _parse_line(text: str, where: str) -> dict:
    """One JSON object with the required keys, or a ValueError naming the line and the problem."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise InputError(
            f"{where}: missing key(s) {missing}; each line needs {list(REQUIRED_KEYS)} "
            f"(optional: {list(CAPTION_KEYS)}); keys found: {sorted(record)}"
        )
    return record


def read_jsonl_pairs(path: str) -> datasets.Dataset:
    """Return a Dataset with caption, jpg_0 (chosen path), jpg_1 (rejected path), label_0 = 1.0,
    and caption_0 / caption_1 when the lines carry per-image captions (all lines or none)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputNotFoundError(f"JSONL pairs file not found: {file}")
    folder = file.resolve().parent
    columns = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "caption_0": [], "caption_1": []}
    with_captions = None  # decided by the first record: all lines must then agree
    with open(file, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{file}, line {number}"
            record = _parse_line(text, where)
            has_captions = any(key in record for key in CAPTION_KEYS)
            if with_captions is None:
                with_captions = has_captions
            if has_captions != with_captions or (has_captions and not all(k in record for k in CAPTION_KEYS)):
                raise InputError(
                    f"{where}: give both per-image captions {list(CAPTION_KEYS)} on every line or on none "
                    f"(the first line {'had' if with_captions else 'lacked'} them); keys found: {sorted(record)}"
                )
            if not isinstance(record["prompt"], str):
                raise InputError(f"{where}: key 'prompt' must be a string, got {record['prompt']!r}")
            columns["caption"].append(record["prompt"])
            columns["jpg_0"].append(_resolve(record["chosen"], folder, where, "chosen"))
            columns["jpg_1"].append(_resolve(record["rejected"], folder, where, "rejected"))
            columns["label_0"].append(1.0)
            if has_captions:
                columns["caption_0"].append(str(record["chosen_caption"]))
                columns["caption_1"].append(str(record["rejected_caption"]))
    if not columns["caption"]:
        raise InputError(f"{file}: no pairs (the file is empty)")
    if not with_captions:
        del columns["caption_0"], columns["caption_1"]
    features = datasets.Features(
        {name: datasets.Value("float64" if name == "label_0" else "string") for name in columns}
    )
    return datasets.Dataset.from_dict(columns, features=features)
