"""Decode one stored image (bytes, HF Image dict, PIL image or file path) into an RGB PIL image.

Preference tables hold images in several forms: Pick-a-Pic parquet stores raw encoded bytes,
a `datasets.Image(decode=False)` column yields {"bytes": ..., "path": ...}, JSONL tables hold
file paths, and in-memory tables may hold PIL images. One function turns all of them into an
RGB image, and turns every failure into a `BadImageError` that says which row / column (or
file) was bad, so the dataset can skip and count it instead of crashing deep inside PIL.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image


class BadImageError(ValueError):
    """An image value could not be decoded; the message names where it came from and why."""


def _open(value) -> Image.Image:
    """Open `value` as a PIL image (not yet RGB); raise TypeError for unsupported types."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise ValueError("empty image bytes")
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, dict):
        # HF `datasets.Image(decode=False)` storage: bytes win over path, as in datasets itself.
        if value.get("bytes") is not None:
            return _open(value["bytes"])
        if value.get("path"):
            return _open(value["path"])
        raise ValueError(f"image dict has neither 'bytes' nor 'path' (keys: {sorted(value)})")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        return Image.open(path)
    if value is None:
        raise ValueError("image value is None (missing image)")
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def decode_image(value, where: str) -> Image.Image:
    """Return `value` decoded as an RGB PIL image, fully loaded into memory.

    `where` says where the value came from (e.g. "row 17, column jpg_1"); it is put in the
    `BadImageError` raised for any failure (corrupt / truncated bytes, missing file,
    unsupported type), together with the underlying cause.
    """
    try:
        image = _open(value)
        image.load()  # force the full decode now, so truncated data fails here, not later
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ...)
        raise BadImageError(f"cannot decode image at {where}: {type(error).__name__}: {error}") from error
