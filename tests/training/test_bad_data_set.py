"""The bad-data set (tests/data/bad_data.py) trains to the end: each kind of row is trained on,
dropped at load with its reason, dropped as a tie, or skipped at decode (warned about once and
counted once, however often it is read), through the real training recipe."""

import json
import logging
import re
from collections import Counter

import pytest

from t2i_align.data.tables import load_pairs
from tests.data.bad_data import MAX_PIXELS, write_bad_parquet
from tests.training.helpers import read_metrics, train

STEPS = 27  # 19 usable rows, batch 2: about 3 epochs, so every row is read about 3 times


@pytest.mark.parametrize("cache", [False, True], ids=["images", "latent-cache"])
def test_bad_data_set_trains_to_the_end_with_every_kind_handled(tmp_path, caplog, cache):
    path = tmp_path / "bad.parquet"
    outcomes = write_bad_parquet(path)
    expected = {kind: [row for row, (_, outcome, _) in enumerate(outcomes) if outcome == kind]
                for kind in ("trained", "dropped", "tie", "skipped")}
    overrides = ["data=pickapic_v2", f"data.path={path}", "data.num_workers=0", "method=dpo",
                 f"trainer.max_steps={STEPS}", "trainer.batch_size=2", "data.resolution=24",
                 f"data.max_image_pixels={MAX_PIXELS}", "trainer.log_sample_indices=true"]
    if cache:
        overrides += ["data.cache.enabled=true", f"data.cache.dir={tmp_path / 'cache'}", "data.random_flip=false"]
    with caplog.at_level(logging.INFO, logger="t2i_align"):
        run_dir, final = train(tmp_path / "run", overrides)

    # the run finished, every step finite
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    info = json.loads((final / "training_info.json").read_text())

    # dropped at load, per reason, with the row numbers of the user's table
    reasons = Counter(reason for _, outcome, reason in outcomes if outcome == "dropped")
    assert info["data"]["dropped"] == dict(reasons)
    examples = {reason: [row for row, (_, _, r) in enumerate(outcomes) if r == reason] for reason in reasons}
    assert info["data"]["dropped_examples"] == examples
    assert info["data"]["ties"] == len(expected["tie"]) == 1
    assert info["data"]["used"] == len(expected["trained"]) + len(expected["skipped"])
    assert "8 of 28 rows dropped at load" in caplog.text and "caption is null or not text: 1 (row 2)" in caplog.text

    # skipped at decode: unique rows, in metrics.jsonl and training_info.json
    assert info["skipped_rows"] == len(expected["skipped"]) == 5
    assert info["skipped_source_rows"] == expected["skipped"]
    assert records[-1]["skipped_rows"] == 5
    # warned about once per row, naming the user's row (the cache also once while it is built)
    warned = Counter(re.findall(r"^\S+ +t2i_align.train:.*skipping pair: [^\n]*?row (\d+)", caplog.text, re.M))
    assert {int(r): n for r, n in warned.items()} == {r: 1 for r in expected["skipped"]}
    if cache:
        built = Counter(re.findall(r"latent cache: skipping pair: [^\n]*?row (\d+)", caplog.text))
        assert {int(r): n for r, n in built.items()} == {r: 1 for r in expected["skipped"]}
    assert "13000 x 13000 = 169000000 pixels is more than data.max_image_pixels" in caplog.text

    # trained on: every odd-but-valid row was in some step, and nothing else was
    table, _ = load_pairs("pickapic", str(path))
    source_rows = table["source_row"]
    seen = {source_rows[i] for r in records for i in r["indices"]}
    assert seen == set(expected["trained"])
