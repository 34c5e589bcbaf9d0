"""Decode one stored image (bytes, HF Image dict, PIL image or file path) into an RGB PIL image.

Preference tables hold images in several forms: Pick-a-Pic parquet stores raw encoded bytes,
a `datasets.Image(decode=False)` column yields {"bytes": ..., "path": ...}, JSONL tables hold
file paths, and in-memory tables may hold PIL images. One function turns all of them into an
RGB image, and turns every failure into a `BadImageError` that says which row / column (or
file) was bad, so the dataset can skip and count it instead of crashing deep inside PIL.

What "RGB" means for the odd ones: EXIF orientation is applied (phone photos); alpha (RGBA, LA,
palette transparency) is composited over white instead of dropping the channel, which would
show whatever colour the transparent pixels happen to hold; 16-bit grey (PNG "I;16", "I") is
scaled to 8 bits (PIL's own conversion clips it: every value above 255 would turn white);
grey, CMYK and palette images are converted. An image with more pixels than `max_pixels`
(data.max_image_pixels) is refused from its header, before it is decoded: a 13000 x 13000 PNG
would take about 500 MB of memory to decode only to be resized to 1024 pixels.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from t2i_align.errors import InputError, InputNotFoundError


class BadImageError(InputError):
    """An image value could not be decoded; the message names where it came from and why."""


def _open(value) -> Image.Image:
    """Open `value` as a PIL image (not yet RGB); raise TypeError for unsupported types."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise InputError("empty image bytes")
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, dict):
        # HF `datasets.Image(decode=False)` storage: bytes win over path, as in datasets itself.
        if value.get("bytes") is not None:
            return _open(value["bytes"])
        if value.get("path"):
            return _open(value["path"])
        raise InputError(f"image dict has neither 'bytes' nor 'path' (keys: {sorted(value)})")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise InputNotFoundError(f"no such image file: {path}")
        return Image.open(path)
    if value is None:
        raise InputError("image value is None (missing image)")
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode (see the module docstring for the choices)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or values.max(initial=0) > 255:  # 16-bit range
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(value, where: str, max_pixels: int | None = None) -> Image.Image:
    """Return `value` decoded as an RGB PIL image, fully loaded into memory.

    `where` says where the value came from (e.g. "row 17, column jpg_1"); it is put in the
    `BadImageError` raised for any failure (corrupt / truncated bytes, missing file,
    unsupported type, more than `max_pixels` pixels), together with the underlying cause.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit (89 MP) and refuses above twice that: our
            # max_pixels check below is the one that decides, with a message naming the row.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(value)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(f"{width} x {height} = {width * height} pixels is more than data.max_image_pixels="
                             f"{max_pixels} (not decoded)")
        image.load()  # force the full decode now, so truncated data fails here, not later
        return _to_rgb(image)
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ...)
        if isinstance(error, Image.DecompressionBombError):
            error = ValueError(f"{error} (over PIL's own limit; not decoded)")
        raise BadImageError(f"cannot decode image at {where}: {type(error).__name__}: {error}") from error
