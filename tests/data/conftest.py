"""Fixtures for the data tests: an isolated, offline HF datasets cache and a tiny
Pick-a-Pic-v2-schema table (see helpers.py)."""

from __future__ import annotations

import datasets
import pytest

from tests.data.helpers import pickapic_rows


@pytest.fixture(autouse=True)
def offline_datasets_cache(tmp_path, monkeypatch):
    """Keep parquet conversion caches out of ~/.cache and make any hub access fail fast."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def pickapic_table() -> datasets.Dataset:
    return datasets.Dataset.from_dict(pickapic_rows())
