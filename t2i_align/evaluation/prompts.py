"""Prompt sets for evaluation: a small built-in set, or a text / JSONL / parquet file."""

import json
from pathlib import Path

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


def load_prompts(source: str, limit: int | None = None) -> list[str]:
    """"builtin", or a .txt (one prompt per line), .jsonl ("prompt" or "caption" key) or .parquet
    ("caption" or "prompt" column) file. Duplicates are dropped, order kept; `limit` keeps the
    first N."""
    if source == "builtin":
        prompts = list(BUILTIN)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"eval.prompts: {source} is neither 'builtin' nor a file")
        if path.suffix == ".jsonl":
            prompts = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if "prompt" not in row and "caption" not in row:
                        raise ValueError(f"{path}:{number}: no 'prompt' or 'caption' key")
                    prompts.append(row.get("prompt", row.get("caption")))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            column = "caption" if "caption" in table.column_names else "prompt"
            if column not in table.column_names:
                raise ValueError(f"{path}: no 'caption' or 'prompt' column; columns: {table.column_names}")
            prompts = [str(p) for p in table.column(column).to_pylist()]
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise ValueError(f"eval.prompts: no prompts in {source}")
    return prompts[:limit] if limit else prompts
