"""A Pick-a-Pic-schema table of bad and odd rows, made by the tests: one row per kind, and for
each the outcome the loader and the training loop must give it.

    trained    used for training as is (odd, but valid: any Unicode, very long captions,
               grey / RGBA / CMYK / 16-bit / 1x1 / extreme aspect ratio images)
    dropped    removed when the table is loaded, before the first step, with the named reason
    tie        removed as a tie (label 0.5), counted apart
    skipped    an image cannot be decoded (or is over the pixel limit): skipped when read,
               warned about once and counted once however often it is read
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image

MAX_PIXELS = 4_000_000  # data.max_image_pixels for the run: the oversized image has 169 M


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def good_png(i: int, size=(40, 40)) -> bytes:
    return _encode(Image.new("RGB", size, (200, (37 * i) % 255, 40)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (valid signature and IHDR, then a tiny IDAT and
    IEND): decoding it would need width * height * 3 bytes, reading its size needs none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def odd_images() -> dict[str, bytes]:
    """Valid images in the modes and shapes real scrapes contain."""
    grey16 = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 30))
    return {
        "grey": _encode(Image.new("L", (40, 40), 90)),
        "rgba": _encode(rgba),
        "cmyk": _encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
        "grey16": _encode(grey16),
        "one_pixel": _encode(Image.new("RGB", (1, 1), (10, 200, 10))),
        "extreme_aspect": _encode(Image.new("RGB", (400, 3), (10, 10, 200))),
    }


def bad_rows() -> tuple[dict, list[tuple[str, str, str | None]]]:
    """(columns of the table, [(kind, outcome, reason)] in row order). The reason is the
    DROP_REASONS key for dropped rows."""
    png = good_png(0)
    full = png_header_only(13000, 13000)
    truncated = good_png(5, (64, 64))[:60]
    odd = odd_images()
    spec = [
        # kind, caption, jpg_0, jpg_1, label_0, outcome, reason
        ("good", "a red circle", good_png(1), good_png(2), 1.0, "trained", None),
        ("good swapped", "a blue square", good_png(3), good_png(4), 0.0, "trained", None),
        ("null caption", None, png, png, 1.0, "dropped", "caption_missing"),
        ("empty caption", "", png, png, 1.0, "dropped", "caption_blank"),
        ("blank caption", "   \n\t", png, png, 0.0, "dropped", "caption_blank"),
        ("very long caption", "a very long prompt " * 400, good_png(6), good_png(7), 1.0, "trained", None),
        ("non-ASCII caption", "ein Bild: 猫と犬 🐱🐶 — café naïve", good_png(8), good_png(9), 0.0, "trained", None),
        ("NaN label", "nan label", png, png, float("nan"), "dropped", "label_not_finite"),
        ("inf label", "inf label", png, png, float("inf"), "dropped", "label_not_finite"),
        ("null label", "null label", png, png, None, "dropped", "label_missing"),
        ("label 7.0", "label seven", png, png, 7.0, "dropped", "label_out_of_range"),
        ("label -1", "label minus one", png, png, -1.0, "dropped", "label_out_of_range"),
        ("tie", "a tie", good_png(10), good_png(11), 0.5, "tie", None),
        ("corrupt image", "corrupt", b"this is not an image", good_png(12), 1.0, "skipped", None),
        ("empty image", "empty bytes", good_png(13), b"", 0.0, "skipped", None),
        ("truncated image", "truncated", truncated, good_png(14), 1.0, "skipped", None),
        ("null image", "no image", None, good_png(15), 1.0, "skipped", None),
        ("oversized image", "huge", full, good_png(16), 1.0, "skipped", None),
        ("grey image", "grey", odd["grey"], good_png(17), 1.0, "trained", None),
        ("RGBA image", "rgba", good_png(18), odd["rgba"], 0.0, "trained", None),
        ("CMYK image", "cmyk", odd["cmyk"], good_png(19), 1.0, "trained", None),
        ("16-bit image", "sixteen bit", odd["grey16"], good_png(20), 1.0, "trained", None),
        ("1x1 image", "one pixel", good_png(21), odd["one_pixel"], 0.0, "trained", None),
        ("extreme aspect ratio", "a long strip", odd["extreme_aspect"], good_png(22), 1.0, "trained", None),
        ("fractional label", "mostly the first", good_png(23), good_png(24), 0.75, "trained", None),
        ("good", "a green triangle", good_png(25), good_png(26), 1.0, "trained", None),
        ("good", "a pink circle", good_png(27), good_png(28), 0.0, "trained", None),
        ("good", "an orange square", good_png(29), good_png(30), 1.0, "trained", None),
    ]
    columns = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    outcomes = []
    for kind, caption, jpg_0, jpg_1, label, outcome, reason in spec:
        columns["caption"].append(caption)
        columns["jpg_0"].append(jpg_0)
        columns["jpg_1"].append(jpg_1)
        columns["label_0"].append(label)
        columns["label_1"].append(None if label is None else 1.0 - label)
        outcomes.append((kind, outcome, reason))
    return columns, outcomes


def write_bad_parquet(path) -> list[tuple[str, str, str | None]]:
    """Write the table as one parquet file (Pick-a-Pic's schema: binary images, float labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, outcomes = bad_rows()
    schema = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                        ("label_0", pa.float64()), ("label_1", pa.float64())])
    pq.write_table(pa.table(columns, schema=schema), str(path))
    return outcomes
