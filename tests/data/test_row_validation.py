"""Every row is validated when the table is loaded: bad captions and labels are dropped there,
counted per reason and named by row; ties are counted apart; an empty result stops the run."""

import logging
import math

import datasets
import pytest

from t2i_align.data.dataset import read_pair
from t2i_align.data.tables import DROP_REASONS, describe_drops, invalid_rows, load_pairs
from t2i_align.errors import InputError, UserError
from tests.data.helpers import png_bytes
from PIL import Image


def _table(captions, labels, **extra):
    png = png_bytes(Image.new("RGB", (8, 8), "red"))
    n = len(captions)
    return datasets.Dataset.from_dict({"caption": captions, "jpg_0": [png] * n, "jpg_1": [png] * n,
                                       "label_0": labels, **extra})


def test_invalid_rows_names_one_reason_per_row():
    table = _table(["ok", None, "", "  ", "ok", "ok", "ok", "ok", "ok", "ok", "ok"],
                   [1.0, 1.0, 0.0, 1.0, None, math.nan, math.inf, 1.5, -0.1, 0.0, 0.3])
    assert invalid_rows(table, batch_size=4) == {
        1: "caption_missing", 2: "caption_blank", 3: "caption_blank", 4: "label_missing", 5: "label_not_finite",
        6: "label_not_finite", 7: "label_out_of_range", 8: "label_out_of_range"}
    # a caption problem wins over a label problem in the same row
    assert invalid_rows(_table([None], [math.nan])) == {0: "caption_missing"}
    assert set(DROP_REASONS) >= {"caption_missing", "label_not_a_number"}


def test_label_that_is_not_a_number_is_dropped():
    table = datasets.Dataset.from_dict({"caption": ["a", "b"], "label_0": ["1.0", "0"]})
    assert invalid_rows(table) == {0: "label_not_a_number", 1: "label_not_a_number"}


def test_per_image_captions_are_checked_only_when_required(tmp_path):
    table = _table(["a", "b", "c"], [1.0, 0.0, 1.0], caption_0=["x", None, "z"], caption_1=["x", "y", ""])
    path = tmp_path / "t"
    table.save_to_disk(str(path))
    used, summary = load_pairs("pickapic", str(path))
    assert len(used) == 3 and summary["dropped"] == {}
    used, summary = load_pairs("pickapic", str(path), require_image_captions=True)
    assert used["source_row"] == [0]
    assert summary["dropped"] == {"image_caption_missing": 1, "image_caption_blank": 1}


def test_summary_log_and_source_rows(tmp_path, caplog):
    captions = ["ok"] * 12
    captions[2] = None
    labels = [1.0, 0.0] * 6
    labels[4], labels[7], labels[9] = 7.0, 0.5, math.nan
    path = tmp_path / "t"
    _table(captions, labels).save_to_disk(str(path))
    with caplog.at_level(logging.INFO, logger="t2i_align.data"):
        table, summary = load_pairs("pickapic", str(path), max_pairs=6)
    assert summary["rows"] == 12 and summary["ties"] == 1 and summary["used"] == 6
    assert summary["dropped"] == {"caption_missing": 1, "label_not_finite": 1, "label_out_of_range": 1}
    assert summary["dropped_examples"] == {"caption_missing": [2], "label_not_finite": [9], "label_out_of_range": [4]}
    assert summary["cut_by_max_pairs"] == 2  # 12 - 3 invalid - 1 tie = 8 usable, 6 kept
    assert table["source_row"] == [0, 1, 3, 5, 6, 8]
    assert "3 of 12 rows dropped at load: caption is null or not text: 1 (row 2); label is NaN or infinite: 1 " \
           "(row 9); label is outside [0, 1]: 1 (row 4)" in caplog.text
    assert "12 rows; 3 dropped as invalid, 1 ties dropped, 2 beyond data.max_pairs=6; using 6 pairs" in caplog.text


def test_describe_drops_lists_the_first_rows_only():
    text = describe_drops({"label_missing": 9}, {"label_missing": [1, 2, 3, 4, 5]})
    assert text == "label is null: 9 (rows 1, 2, 3, 4, 5, ...)"


def test_nothing_left_is_an_error_naming_source_and_reasons(tmp_path):
    path = tmp_path / "t"
    _table([None, "ok", "ok"], [1.0, math.nan, 0.5]).save_to_disk(str(path))
    with pytest.raises(InputError, match=rf"{path}: no pairs to train on: 3 rows, 2 invalid \(caption is null or "
                                         r"not text: 1 \(row 0\); label is NaN or infinite: 1 \(row 1\)\), 1 ties"):
        load_pairs("pickapic", str(path))
    assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)


def test_label_below_half_prefers_the_second_image():
    red, blue = png_bytes(Image.new("RGB", (4, 4), "red")), png_bytes(Image.new("RGB", (4, 4), "blue"))
    for label, first in ((0.0, "blue"), (0.3, "blue"), (0.5, "red"), (0.75, "red"), (1.0, "red")):
        image_w, *_ = read_pair({"caption": "c", "jpg_0": red, "jpg_1": blue, "label_0": label}, 0, False)
        assert image_w.getpixel((0, 0)) == Image.new("RGB", (1, 1), first).getpixel((0, 0)), label
