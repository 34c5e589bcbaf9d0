"""Pick-Double-Caption builder (DCPO, Saeedi et al. 2025, arXiv 2502.06023): copy a
Pick-a-Pic-schema dataset and add caption_0 / caption_1 (one caption per image, image order)
by one of the strategies of double_caption.py. The result is what conf/data/pick_double_caption
reads (data.image_caption_columns=[caption_0, caption_1], image order).
"""

import io
from pathlib import Path

import pyarrow as pa
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from .double_caption import double_captions, load_captioner, load_paraphraser
from t2i_align.errors import InputError, InputNotFoundError

ADDED = [("caption_0", pa.string()), ("caption_1", pa.string()), ("caption_strategy", pa.string()),
         ("caption_level", pa.string()), ("captioner", pa.string()), ("paraphraser", pa.string())]


def load_input_table(path: str, split: str):
    """A Pick-a-Pic-schema table: save_to_disk folder, parquet file / folder (hub snapshot)."""
    import datasets

    from t2i_align.data.tables import _is_saved_dataset, _load_saved, _parquet_files

    local = Path(path).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        return _load_saved(local, split)
    files = _parquet_files(str(local), split) if local.exists() else None
    if not files:
        raise InputNotFoundError(f"dataset.input={path!r}: not a save_to_disk folder or parquet file(s)")
    return datasets.Dataset.from_parquet(files, split="train")


def _image(value) -> Image.Image:
    data = value["bytes"] if isinstance(value, dict) else value
    return Image.open(io.BytesIO(data)).convert("RGB")


def plan_and_rows_double_caption(cfg: DictConfig, device):
    """(plan, number of items, make_rows, schema, title, description) for a double-caption build."""
    ds = cfg.dataset
    table = load_input_table(ds.input, ds.input_split)
    for column in (ds.caption_column, *ds.image_columns, ds.label_column):
        if column not in table.column_names:
            raise InputError(f"dataset.input {ds.input}: no column {column!r}; columns: {table.column_names}")
    for column in ("caption_0", "caption_1"):
        if column in table.column_names:
            table = table.remove_columns(column)  # replaced by the new captions
    if ds.drop_ties:
        labels = table[ds.label_column]
        table = table.select([i for i, label in enumerate(labels) if label != 0.5])
    if ds.num_pairs:
        table = table.select(range(min(int(ds.num_pairs), table.num_rows)))
    if table.num_rows == 0:
        raise InputError(f"dataset.input {ds.input}: no pairs to caption")
    needs_captioner = ds.strategy in ("captioning", "hybrid")
    needs_paraphraser = ds.strategy in ("perturbation", "hybrid")
    plan = {"builder": "double_caption", "name": ds.name, "input": ds.input, "input_split": ds.input_split,
            "input_fingerprint": table._fingerprint, "num_pairs": table.num_rows, "strategy": ds.strategy,
            "level": ds.level if needs_paraphraser else None,
            "captioner": OmegaConf.to_container(ds.captioner, resolve=True) if needs_captioner else None,
            "paraphraser": OmegaConf.to_container(ds.paraphraser, resolve=True) if needs_paraphraser else None,
            "seed": ds.seed, "shard_size": ds.shard_size}
    schema = pa.schema(list(table.data.schema) + [pa.field(n, t) for n, t in ADDED])
    models = {}

    def make_rows(start, end):
        if not models:  # loaded only when a shard is actually missing
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
            models["captioner"] = load_captioner(ds.captioner.path, device=device, dtype=dtype,
                                                 prompt_template=ds.captioner.prompt_template,
                                                 max_new_tokens=ds.captioner.max_new_tokens,
                                                 batch_size=ds.batch_size) if needs_captioner else None
            models["paraphraser"] = load_paraphraser(ds.paraphraser.path, device=device, dtype=dtype,
                                                     tokenizer_path=ds.paraphraser.tokenizer_path,
                                                     batch_size=ds.batch_size) if needs_paraphraser else None
        rows = table.select(range(start, end)).to_list()
        images_0 = [_image(r[ds.image_columns[0]]) for r in rows] if needs_captioner else None
        images_1 = [_image(r[ds.image_columns[1]]) for r in rows] if needs_captioner else None
        captions_0, captions_1 = double_captions(
            ds.strategy, images_0, images_1, [r[ds.caption_column] for r in rows],
            [float(r[ds.label_column]) for r in rows], captioner=models["captioner"],
            paraphraser=models["paraphraser"], level=ds.level, seed=int(ds.seed) + start)
        for row, c0, c1 in zip(rows, captions_0, captions_1):
            row.update(caption_0=c0, caption_1=c1, caption_strategy=ds.strategy,
                       caption_level=plan["level"], captioner=ds.captioner.path if needs_captioner else None,
                       paraphraser=ds.paraphraser.path if needs_paraphraser else None)
        return rows

    description = (f"{ds.input} with one caption per image (caption_0 for jpg_0, caption_1 for jpg_1) by the "
                   f"DCPO '{ds.strategy}' strategy.")
    return plan, table.num_rows, make_rows, schema, ds.name, description
