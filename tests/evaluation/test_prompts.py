"""Prompt sets: builtin, text / JSONL / parquet, Pick-a-Pic test split, PartiPrompts, HPSv2 benchmark."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t2i_align.evaluation.prompts import BUILTIN, HPSV2_STYLES, detect_kind, load_prompt_set, load_prompts


def test_builtin_and_limit():
    assert load_prompts("builtin") == BUILTIN
    assert load_prompts("builtin", 3) == BUILTIN[:3]


def test_text_file_drops_blanks_and_duplicates(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n a dog \na cat\n")
    assert load_prompt_set(str(path)) == [("a cat", ""), ("a dog", "")]


def test_jsonl_with_groups_and_missing_key(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x", "group": "g1"}) + "\n" + json.dumps({"caption": "y"}) + "\n")
    assert load_prompt_set(str(path)) == [("x", "g1"), ("y", "")]
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: no 'prompt' or 'caption'"):
        load_prompt_set(str(path))


def test_pickapic_test_unique_from_save_to_disk_and_snapshot(tmp_path):
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"caption": ["train prompt"], "label_0": [1.0]}),
        "test_unique": datasets.Dataset.from_dict({"caption": ["t1", "t2", "t1"], "label_0": [1.0, 0.0, 0.5]}),
    })
    splits.save_to_disk(str(tmp_path / "saved"))
    assert load_prompts(str(tmp_path / "saved")) == ["t1", "t2"]
    assert load_prompts(f"pickapic:{tmp_path / 'saved'}", split="train") == ["train prompt"]
    with pytest.raises(ValueError, match="no split 'validation_unique'"):
        load_prompts(str(tmp_path / "saved"), split="validation_unique")
    # hub snapshot layout: data/<split>-0000x-of-0000y.parquet; only the split's files are read
    (tmp_path / "snap" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["u1", "u2"], "jpg_0": [b"x", b"y"]}),
                   tmp_path / "snap" / "data" / "test_unique-00000-of-00001.parquet")
    pq.write_table(pa.table({"caption": ["train1"], "jpg_0": [b"x"]}),
                   tmp_path / "snap" / "data" / "train-00000-of-00001.parquet")
    assert load_prompts(str(tmp_path / "snap")) == ["u1", "u2"]


def test_partiprompts_categories_and_subset(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\n"
                    "bond\tAbstract\tBasic\t\n"
                    "a red car\tVehicles\tColors\t\n"
                    "a cat on a mat\tAnimals\tBasic\t\n"
                    "a blue bus\tVehicles\tColors\t\n")
    assert detect_kind(path) == "partiprompts"
    assert load_prompt_set(str(path))[1] == ("a red car", "Vehicles")
    assert load_prompts(str(path), subset=["Vehicles"]) == ["a red car", "a blue bus"]
    assert load_prompts(str(path), limit=1) == ["bond", "a red car", "a cat on a mat"]  # first of each group
    with pytest.raises(ValueError, match=r"no prompts in group\(s\) \['Food'\]"):
        load_prompts(str(path), subset=["Food"])
    bad = tmp_path / "other.tsv"
    bad.write_text("text\tx\n")
    with pytest.raises(ValueError, match="no 'Prompt' column"):
        load_prompts(str(bad))


def test_hpsv2_benchmark_folder(tmp_path):
    for style in HPSV2_STYLES:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3)]))
    rows = load_prompt_set(str(tmp_path))
    assert len(rows) == 12 and rows[0] == ("anime 0", "anime") and rows[-1] == ("photo 2", "photo")
    assert load_prompts(f"hpsv2:{tmp_path}", limit=2, subset=["photo", "anime"]) == [
        "anime 0", "anime 1", "photo 0", "photo 1"]
    assert load_prompt_set(str(tmp_path / "paintings.json"))[0] == ("paintings 0", "paintings")
    (tmp_path / "photo.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="photo.json: expected a JSON list"):
        load_prompts(f"hpsv2:{tmp_path}")
    (tmp_path / "photo.json").unlink()
    with pytest.raises(FileNotFoundError, match="photo.json"):
        load_prompts(f"hpsv2:{tmp_path}")


def test_missing_source_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompts(str(tmp_path / "nope.txt"))
