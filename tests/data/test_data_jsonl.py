"""JSONL pair files: relative image paths, per-image captions, and errors naming file / line / key."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from t2i_align.data.dataset import PreferencePairs
from t2i_align.data.tables import load_pair_table


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_relative_paths_resolve_against_the_jsonl_folder(tmp_path, monkeypatch):
    (tmp_path / "pairs" / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pairs" / "img" / "a.png")
    absolute = tmp_path / "b.png"
    Image.new("RGB", (8, 8), "blue").save(absolute)
    _write(tmp_path / "pairs" / "train.jsonl", [
        {"prompt": "a red thing", "chosen": "img/a.png", "rejected": str(absolute)},
        "",  # blank lines are skipped
        {"prompt": "again", "chosen": str(absolute), "rejected": "img/a.png"},
    ])
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    table = load_pair_table("jsonl", "pairs/train.jsonl")
    assert table.column_names == ["caption", "jpg_0", "jpg_1", "label_0", "source_row"]
    assert table["caption"] == ["a red thing", "again"]
    assert table[0]["jpg_0"] == str((tmp_path / "pairs" / "img" / "a.png").resolve())
    assert table[0]["jpg_1"] == str(absolute) and table["label_0"] == [1.0, 1.0]
    item = PreferencePairs(table, resolution=8)[0]  # the paths decode through the torch dataset
    assert item["pixels_w"][0].min() == 1.0 and item["pixels_l"][2].min() == 1.0  # red chosen, blue rejected


def test_per_image_captions(tmp_path):
    _write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a.png", "rejected": "b.png",
                                   "chosen_caption": "good", "rejected_caption": "bad"}])
    row = load_pair_table("jsonl", str(tmp_path / "p.jsonl"))[0]
    assert (row["caption_0"], row["caption_1"]) == ("good", "bad")


@pytest.mark.parametrize("bad_line, expected", [
    ('{"prompt": "p", "chosen": "a.png"', r"line 2: not valid JSON"),
    ('{"prompt": "p", "chosen": "a.png"}', r"line 2: missing key\(s\) \['rejected'\]"),
    ('["a", "b"]', r"line 2: expected a JSON object"),
    ('{"prompt": "p", "chosen": "a.png", "rejected": "b.png", "chosen_caption": "x", "rejected_caption": "y"}',
     r"line 2: give both per-image captions"),
])
def test_bad_line_names_file_and_line(tmp_path, bad_line, expected):
    good = json.dumps({"prompt": "p", "chosen": "a.png", "rejected": "b.png"})
    (tmp_path / "p.jsonl").write_text(good + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=expected) as info:
        load_pair_table("jsonl", str(tmp_path / "p.jsonl"))
    assert "p.jsonl" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pair_table("jsonl", str(tmp_path / "nope.jsonl"))
