"""Prompt sets for evaluation: a small built-in set, plain text / JSONL / parquet files, and the
benchmark sets of the field when present locally (nothing is downloaded):

- Pick-a-Pic test prompts (Kirstain et al. 2023; Diffusion-DPO and MaPO report on the 500 unique
  prompts of the test split): a save_to_disk folder, a parquet file, or a hub snapshot folder
  (``data/test_unique-*.parquet``); only the ``caption`` column is read (no image bytes).
- PartiPrompts (Yu et al. 2022, ``PartiPrompts.tsv`` of google-research/parti, 1,632 prompts):
  columns Prompt, Category, Challenge; the Category is the prompt's group.
- HPSv2 benchmark (Wu et al. 2023): a folder with ``anime.json``, ``concept-art.json``,
  ``paintings.json``, ``photo.json`` (800 prompts each, JSON lists of strings) or one of those
  files; the style is the prompt's group.

Every prompt carries a group ("" when the set has none) so results can be broken down the way
the benchmark reports them (HPSv2 per style, PartiPrompts per category).
"""

import csv
import json
from pathlib import Path
from t2i_align.errors import InputError, InputNotFoundError

BUILTIN = [
    "a red circle on a grey background",
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dawn",
    "a bowl of ramen with a soft-boiled egg, studio lighting",
    "a cartoon fox reading a book under a tree",
    "a futuristic city skyline at night, neon lights, rain",
    "a portrait of an old fisherman, dramatic light",
    "pixel art of a castle on a hill",
    "a cozy cabin in a snowy forest, warm windows",
    "a golden retriever puppy playing in autumn leaves",
    "an oil painting of a sailing ship in a storm",
    "a minimalist poster of a mountain and the sun",
]

HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
KINDS = ("builtin", "text", "jsonl", "parquet", "pickapic", "partiprompts", "hpsv2", "toy")


def _text(path: Path) -> list[tuple[str, str]]:
    return [(line.strip(), "") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl(path: Path) -> list[tuple[str, str]]:
    """One object per line with a "prompt" or "caption" key; an optional "group" / "category"."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" not in row and "caption" not in row:
            raise InputError(f"{path}:{number}: no 'prompt' or 'caption' key (keys: {sorted(row)})")
        rows.append((str(row.get("prompt", row.get("caption"))), str(row.get("group", row.get("category", "")))))
    return rows


def _caption_column(files: list[str], where) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    found = pq.read_schema(files[0]).names
    column = "caption" if "caption" in found else "prompt"
    if column not in found:
        raise InputError(f"{where}: no 'caption' or 'prompt' column; columns: {found}")
    return [(str(p), "") for f in files for p in pq.read_table(f, columns=[column]).column(column).to_pylist()]


def _pickapic(path: Path, split: str) -> list[tuple[str, str]]:
    """Captions of a Pick-a-Pic-schema table (save_to_disk folder, parquet file or folder)."""
    from t2i_align.data.tables import _is_saved_dataset, _load_saved, _parquet_files

    if path.is_dir() and _is_saved_dataset(path):
        table = _load_saved(path, split)
        if "caption" not in table.column_names:
            raise InputError(f"{path}: no 'caption' column; columns: {table.column_names}")
        return [(str(p), "") for p in table.select_columns(["caption"])["caption"]]
    files = _parquet_files(str(path), split)
    if not files:
        raise InputError(f"{path}: neither a save_to_disk folder nor parquet file(s)")
    return _caption_column(files, path)


def _partiprompts(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if "Prompt" not in (reader.fieldnames or []):
            raise InputError(f"{path}: not PartiPrompts.tsv (no 'Prompt' column; columns: {reader.fieldnames})")
        return [(row["Prompt"].strip(), (row.get("Category") or "").strip()) for row in reader if row["Prompt"]]


def _hpsv2(path: Path) -> list[tuple[str, str]]:
    files = [path] if path.is_file() else [path / f"{style}.json" for style in HPSV2_STYLES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputNotFoundError(f"HPSv2 benchmark prompt files missing: {missing}")
    rows = []
    for f in files:
        prompts = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"{f}: expected a JSON list of prompt strings")
        rows += [(p, f.stem) for p in prompts]
    return rows


def detect_kind(path: Path) -> str:
    """The kind of prompt source a local path is, from its form."""
    if path.is_dir():
        if all((path / f"{s}.json").is_file() for s in HPSV2_STYLES):
            return "hpsv2"
        return "pickapic"
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "partiprompts"
    if suffix == ".json":
        return "hpsv2"
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, "text")


def load_prompt_set(source: str, limit: int | None = None, subset=None,
                    split: str = "test_unique") -> list[tuple[str, str]]:
    """[(prompt, group)] from `source`: "builtin", a path (kind detected from its form), or
    "<kind>:<path>" with kind in KINDS.

    subset: groups to keep (HPSv2 styles, PartiPrompts categories); limit: the first N prompts
    (of each group, when the set has groups). Duplicates are dropped, order kept. split: the
    split of a save_to_disk DatasetDict / hub snapshot (Pick-a-Pic: test_unique)."""
    kind, _, rest = source.partition(":")
    if kind in KINDS and rest and len(kind) > 1:  # "C:\..." is a path, not a kind
        path_text = rest
    else:
        kind, path_text = ("builtin", "") if source == "builtin" else ("", source)
    if kind == "builtin":
        rows = [(p, "") for p in BUILTIN]
    elif kind == "toy":  # the toy world's unprefixed prompts: "toy:train" or "toy:heldout" (disjoint)
        from t2i_align.toy.world import plain_prompts, prompt_count

        if path_text not in ("train", "heldout"):
            raise InputError(f"eval.prompts={source!r}: use toy:train or toy:heldout")
        held_out = path_text == "heldout"
        rows = [(p, "") for p in plain_prompts(prompt_count(held_out), seed=0, held_out=held_out)]
    else:
        path = Path(path_text).expanduser()
        if not path.exists():
            raise InputNotFoundError(f"eval.prompts: {source!r} is neither 'builtin' nor an existing file / folder")
        kind = kind or detect_kind(path)
        loaders = {"text": _text, "jsonl": _jsonl, "partiprompts": _partiprompts, "hpsv2": _hpsv2,
                   "parquet": lambda p: _caption_column([str(p)], p), "pickapic": lambda p: _pickapic(p, split)}
        rows = loaders[kind](path)
    if subset:
        wanted = {str(s) for s in subset}
        groups = {g for _, g in rows}
        unknown = wanted - groups
        if unknown:
            raise InputError(f"eval.prompt_subset: no prompts in group(s) {sorted(unknown)}; groups of {source}: "
                             f"{sorted(groups)}")
        rows = [r for r in rows if r[1] in wanted]
    rows = list(dict.fromkeys(rows))
    if limit:
        taken: dict[str, int] = {}
        kept = []
        for prompt, group in rows:
            if taken.get(group, 0) < limit:
                kept.append((prompt, group))
                taken[group] = taken.get(group, 0) + 1
        rows = kept
    seen = set()  # one prompt in two groups is sampled once, in its first group
    rows = [r for r in rows if not (r[0] in seen or seen.add(r[0]))]
    if not rows:
        raise InputError(f"eval.prompts: no prompts in {source}")
    return rows


def load_prompts(source: str, limit: int | None = None, subset=None, split: str = "test_unique") -> list[str]:
    """The prompt texts of load_prompt_set."""
    return [p for p, _ in load_prompt_set(source, limit, subset, split)]
