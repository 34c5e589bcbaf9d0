"""Prompts for a dataset build: a text / JSONL / parquet file, the captions of a Pick-a-Pic-schema
dataset (save_to_disk folder, parquet, hub snapshot folder; or a hub id such as
yuvalkirstain/pickapic_v2_no_images, the captions without the images), or the built-in list.

Near-duplicates are dropped (case and whitespace ignored; Pick-a-Pic repeats many prompts), and
an optional word filter removes prompts containing any listed word (whole words, any case):
the MaPO Pick-Safety set was made from prompts with such words removed.
"""

import re

from t2i_align.evaluation.prompts import load_prompts
from t2i_align.errors import InputError, InputNotFoundError


def _normalised(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


def word_filter_pattern(words) -> re.Pattern | None:
    words = [w.strip() for w in (words or []) if w and w.strip()]
    if not words:
        return None
    # (?<!\w) / (?!\w) rather than \b, so words that start or end with a symbol ("+18") match too
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def _hub_captions(name: str, split: str) -> list[str]:
    import datasets

    try:
        table = datasets.load_dataset(name, split=split, columns=["caption"])
    except Exception as error:
        raise InputNotFoundError(f"dataset.prompts={name!r} is not a local file or folder, and loading it as a hub "
                                f"dataset failed: {type(error).__name__}: {error}") from error
    return [str(c) for c in table["caption"]]


def build_prompts(source: str, split: str = "train", exclude_words=None, limit: int | None = None,
                  min_words: int = 1) -> tuple[list[str], dict]:
    """(prompts, counts): de-duplicated, filtered, the first `limit`; counts say what was dropped."""
    from pathlib import Path

    local = source == "builtin" or ":" in source.split("/")[0] or Path(source).expanduser().exists()
    raw = load_prompts(source, split=split) if local else _hub_captions(source, split)
    pattern = word_filter_pattern(exclude_words)
    seen, kept = set(), []
    counts = {"read": len(raw), "duplicates": 0, "filtered_words": 0, "too_short": 0}
    for prompt in raw:
        prompt = " ".join(str(prompt).split())
        key = _normalised(prompt)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        if len(prompt.split()) < min_words:
            counts["too_short"] += 1
        elif pattern is not None and pattern.search(prompt):
            counts["filtered_words"] += 1
        else:
            kept.append(prompt)
    if limit:
        kept = kept[:limit]
    if not kept:
        raise InputError(f"dataset.prompts={source!r}: no prompts left ({counts})")
    counts["kept"] = len(kept)
    return kept, counts
