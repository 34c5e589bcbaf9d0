"""Resumable, deterministic, multi-process sharded output for the dataset builders.

A build is a fixed list of N items (prompts, or rows of an input table) cut into shards of
`shard_size` items. Shard k is written as data/train-{k:05d}-of-{n:05d}.parquet (the hub
layout: `datasets.load_dataset(out_dir)` and the training data configs read it as is) through a
temporary file and a rename, so a shard exists whole or not at all. A killed build restarts,
finds the finished shards and makes only the rest; since every item's randomness comes from its
own index, the result equals an uninterrupted build. Shard k belongs to process k % world_size
(accelerate: prompts are spread across GPUs without duplicates).

build_plan.json holds the fingerprint of everything that decides the content (model, prompts,
prefixes, seed, steps, ...); an output folder made with another plan is refused, never mixed.
Each shard records in its parquet metadata how many items it planned and how many rows it kept
(a reward filter may drop pairs).
"""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from t2i_align.errors import InputError

PLAN_FILE = "build_plan.json"
META_PLANNED = b"t2i_align.planned"
META_KEPT = b"t2i_align.kept"


def fingerprint(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_path(out_dir: Path, index: int, num_shards: int, split: str = "train") -> Path:
    return Path(out_dir) / "data" / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


def check_plan(out_dir: Path, plan: dict, is_main: bool) -> None:
    """Write build_plan.json, or check that an existing one has the same fingerprint."""
    path = Path(out_dir) / PLAN_FILE
    wanted = {"fingerprint": fingerprint(plan), "plan": plan}
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("fingerprint") != wanted["fingerprint"]:
            changed = sorted(k for k in set(plan) | set(found.get("plan", {}))
                             if json.dumps(plan.get(k), default=str) != json.dumps(found.get("plan", {}).get(k), default=str))
            raise InputError(f"{out_dir} holds a build with another plan (differs in: {changed}); "
                             "use another output folder, or delete it to rebuild")
    elif is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(wanted, indent=2, default=str))
        os.replace(tmp, path)


def shard_done(path: Path) -> bool:
    """A finished shard: present and readable (it was renamed into place only when complete)."""
    if not path.is_file():
        return False
    try:
        pq.read_metadata(path)
        return True
    except Exception:  # unreadable: remake it
        return False


def write_shard(path: Path, rows: list[dict], schema: pa.Schema, planned: int) -> None:
    """Write `rows` atomically, with the planned / kept counts in the file's metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    meta = {**(schema.metadata or {}), META_PLANNED: str(planned).encode(), META_KEPT: str(len(rows)).encode()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, path)


def run_shards(out_dir: Path, num_items: int, shard_size: int, make_rows: Callable[[int, int], list[dict]],
               schema: pa.Schema, rank: int = 0, world_size: int = 1, progress=None) -> dict:
    """Make every missing shard that belongs to this process; returns {"made", "skipped"} counts.

    make_rows(start, end) -> the rows of items [start, end); progress(items) is called after each shard."""
    ranges = shard_ranges(num_items, shard_size)
    made = skipped = 0
    for index, (start, end) in enumerate(ranges):
        if index % world_size != rank:
            continue
        path = shard_path(out_dir, index, len(ranges))
        if shard_done(path):
            skipped += 1
        else:
            write_shard(path, make_rows(start, end), schema, planned=end - start)
            made += 1
        if progress is not None:
            progress(end - start)
    return {"made": made, "skipped": skipped}


def shard_stats(out_dir: Path) -> dict:
    """{"shards", "planned", "rows"} over the finished shards of out_dir."""
    files = sorted((Path(out_dir) / "data").glob("train-*-of-*.parquet"))
    planned = rows = 0
    for f in files:
        meta = pq.read_schema(f).metadata or {}
        planned += int(meta.get(META_PLANNED, b"0"))
        rows += int(meta.get(META_KEPT, b"0"))
    return {"shards": len(files), "planned": planned, "rows": rows}
