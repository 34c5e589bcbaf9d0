"""Helpers for the data tests: a tiny Pick-a-Pic-v2-schema table whose images encode
(row, slot) in their colour, so tests can check which image ended up where."""

from __future__ import annotations

import io

from PIL import Image


def colour_of(row: int, slot: int) -> tuple[int, int, int]:
    """The solid colour of image `slot` (0 or 1) of `row` in the tiny table."""
    return (10 * row % 256, 200 if slot == 0 else 40, 120)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# label_0 per row: chosen first, swapped, tie, ...
LABELS = [1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0]


def pickapic_rows(labels=LABELS, size=(24, 16)) -> dict:
    """Columns of a Pick-a-Pic-v2-like table (with extra columns to be ignored)."""
    n = len(labels)
    return {
        "are_different": [True] * n,
        "caption": [f"prompt {i}" for i in range(n)],
        "jpg_0": [png_bytes(Image.new("RGB", size, colour_of(i, 0))) for i in range(n)],
        "jpg_1": [png_bytes(Image.new("RGB", size, colour_of(i, 1))) for i in range(n)],
        "label_0": list(labels),
        "label_1": [1.0 - label for label in labels],
        "model_0": ["m"] * n,
        "ranking_id": list(range(n)),
        "user_id": [7] * n,
    }
