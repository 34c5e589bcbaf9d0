"""Bad data is skipped and counted; a missing column, unknown names and a NaN loss stop the run
with a message that names the problem."""

import io
import json
import math

import datasets
import pytest
import torch
from PIL import Image

from t2i_align.data.tables import MissingColumnError
from t2i_align.training.checkpoint import list_checkpoints
from t2i_align.training.recipe import NonFiniteLossError
from tests.training.helpers import read_metrics, train


def png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_pickapic(folder, n=8, corrupt_rows=(), drop_column=None):
    rows = {"caption": [f"prompt {i}" for i in range(n)],
            "jpg_0": [b"not an image" if i in corrupt_rows else png((200, 30 * i % 255, 40)) for i in range(n)],
            "jpg_1": [png((20, 20, 30 * i % 255)) for i in range(n)],
            "label_0": [1.0, 0.0] * (n // 2), "label_1": [0.0, 1.0] * (n // 2)}
    if drop_column:
        rows.pop(drop_column)
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    return folder


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    data = write_pickapic(tmp_path / "pairs", n=8, corrupt_rows=(1, 4))
    run_dir, final = train(tmp_path / "run", ["data=pickapic_v2", f"data.path={data}",
                                              "data.num_workers=0", "trainer.max_steps=4",
                                              "method=sft"])
    records = read_metrics(run_dir)
    assert len(records) == 4 and all(math.isfinite(r["loss"]) for r in records)
    # 4 batches of 2 over an 8-row epoch: both corrupt rows were read once and skipped
    assert records[-1]["skipped_rows"] == 2
    info = json.loads((final / "training_info.json").read_text())
    assert info["skipped_rows"] == 2


def test_missing_column_fails_at_start_naming_it(tmp_path):
    data = write_pickapic(tmp_path / "pairs", drop_column="jpg_1")
    with pytest.raises(MissingColumnError) as err:
        train(tmp_path / "run", ["data=pickapic_v2", f"data.path={data}", "data.num_workers=0"])
    message = str(err.value)
    assert "jpg_1" in message and "caption" in message and "jpg_0" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unknown_method_and_optimizer_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown method.objective 'orpo'"):
        train(tmp_path / "a", ["method.objective=orpo"])
    with pytest.raises(ValueError, match="unknown trainer.optimizer 'sgd'"):
        train(tmp_path / "b", ["trainer.optimizer=sgd"])


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import t2i_align.training.step as step_module

    real = step_module.compute_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(step_module, "compute_objective", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*Last checkpoint kept: .*step_2"):
        train(run_dir, ["trainer.max_steps=5", "trainer.checkpoint_every=2", "method=mapo"])
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert not (run_dir / "final").exists()


def test_dcpo_without_per_image_captions_names_the_fix(tmp_path):
    data = write_pickapic(tmp_path / "pairs")
    with pytest.raises(ValueError, match="data.image_caption_columns"):
        train(tmp_path / "run", ["data=pickapic_v2", f"data.path={data}", "data.num_workers=0", "method=dcpo"])
