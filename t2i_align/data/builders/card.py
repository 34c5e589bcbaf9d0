"""Dataset card (README.md) for a built dataset: hub metadata header + how it was made."""

import json
from pathlib import Path

COLUMN_DOCS = {
    "caption": "the plain prompt (the training caption)",
    "jpg_0": "image 0, encoded bytes (the chosen image for prefix-pair builds)",
    "jpg_1": "image 1, encoded bytes",
    "label_0": "1.0 when image 0 is preferred (Pick-a-Pic convention), 0.0 otherwise",
    "label_1": "1 - label_0",
    "chosen_prompt": "prompt the chosen image was generated from (prefix + caption)",
    "rejected_prompt": "prompt the rejected image was generated from",
    "chosen_prefix": "prefix of the chosen side", "rejected_prefix": "prefix of the rejected side",
    "model": "base model that generated both images", "seed": "seed of both images of the pair",
    "prompt_index": "index of the prompt in the build's prompt list",
    "guidance_scale": "classifier-free guidance scale", "steps": "sampler steps", "resolution": "image size",
    "chosen_score": "reward of the chosen image (reward filter; empty without one)",
    "rejected_score": "reward of the rejected image",
    "caption_0": "caption of image 0 (DCPO, image order)", "caption_1": "caption of image 1 (DCPO, image order)",
}


def write_card(out_dir: Path, title: str, description: str, plan: dict, stats: dict, columns: list[str],
               command: str) -> Path:
    """out_dir/README.md; the header makes `datasets.load_dataset(out_dir)` and the hub viewer read
    data/train-*.parquet as the train split."""
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*",
        "tags:", "- preference", "- text-to-image", "- t2i_align",
        "---", "",
        f"# {title}", "", description, "",
        "## How it was made", "",
        f"Built with `{command}` (t2i_align).", "",
        "| setting | value |", "|---|---|",
        *(f"| {k} | `{json.dumps(v, default=str)}` |" for k, v in plan.items()), "",
        f"Rows: {stats['rows']} of {stats['planned']} planned items ({stats['shards']} parquet shards"
        f"{'' if stats['rows'] == stats['planned'] else '; the rest were dropped by the filter'}).", "",
        "## Columns", "",
        *(f"- `{c}`: {COLUMN_DOCS.get(c, '')}" for c in columns), "",
        "## Loading", "",
        "```python",
        "import datasets",
        f"pairs = datasets.load_dataset(\"{out_dir}\", split=\"train\")",
        "```",
        "Train on it directly: `python -m t2i_align.train data=pickapic_v2 data.path=<this folder> ...`.",
        "",
    ]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
