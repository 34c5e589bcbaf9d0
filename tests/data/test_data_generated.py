"""The generated offline preference set: deterministic, Pick-a-Pic schema, vivid preferred."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from t2i_align.data.generated import generated_pairs_table


def _saturation(png: bytes) -> float:
    hsv = np.asarray(Image.open(io.BytesIO(png)).convert("HSV"), dtype=np.float64)
    return float((hsv[..., 1] * hsv[..., 2]).mean())


def test_deterministic_and_seed_dependent():
    a, b = generated_pairs_table(16, seed=1), generated_pairs_table(16, seed=1)
    assert a["jpg_0"] == b["jpg_0"] and a["jpg_1"] == b["jpg_1"] and a["caption"] == b["caption"]
    assert generated_pairs_table(16, seed=2)["jpg_0"] != a["jpg_0"]


def test_schema_labels_ties_and_captions():
    table = generated_pairs_table(64, seed=0, size=32)
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "caption_0", "caption_1"} <= set(table.column_names)
    assert Image.open(io.BytesIO(table[0]["jpg_0"])).size == (32, 32)
    labels = list(zip(table["label_0"], table["label_1"]))
    assert set(labels) == {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
    assert labels.count((0.5, 0.5)) == 4  # one row in 16
    for row in table:
        if row["label_0"] == 0.5:
            continue
        chosen, rejected = ("0", "1") if row["label_0"] == 1.0 else ("1", "0")
        assert row[f"caption_{chosen}"].startswith("a vivid ") and row[f"caption_{rejected}"].startswith("a dull ")
        assert row[f"caption_{chosen}"].endswith(row["caption"][row["caption"].index(" ") + 1:])
        assert _saturation(row[f"jpg_{chosen}"]) > 1.5 * _saturation(row[f"jpg_{rejected}"])
