"""Build a dataset preset on first use and reuse it afterwards (data.build=<preset>).

The folder is $T2I_ALIGN_CACHE/datasets/<preset>-<model>-<key>, where key hashes the preset's
settings and the base model's weights files (sizes and times), so a changed preset or a
re-pretrained model gets a new build instead of stale pairs. A build killed halfway resumes.
"""

import hashlib
import json
import os
from pathlib import Path

from omegaconf import OmegaConf
from t2i_align.errors import InputError


def _model_signature(model_path: str) -> list:
    from t2i_align.models.tiny import resolve_model_path

    folder = Path(resolve_model_path(model_path))
    if not folder.is_dir():
        return [model_path]  # a hub id: its name is all we know
    return [model_path] + sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
                                 for p in folder.rglob("*.safetensors"))


CONF_DATASET = Path(__file__).resolve().parents[3] / "conf" / "dataset"


def load_preset(name: str):
    """conf/dataset/<name>.yaml with its defaults chain merged (no Hydra: this also runs inside a
    @hydra.main job, where Hydra cannot be initialised a second time)."""
    path = CONF_DATASET / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown dataset preset {name!r}; known: {sorted(p.stem for p in CONF_DATASET.glob('*.yaml'))}")
    own = OmegaConf.load(path)
    parents = [d for d in own.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(load_preset(p) for p in parents), own)


def ensure_built(preset: str, model_cfg, overrides: list[str] | tuple = (), min_pairs: int = 1) -> Path:
    """The folder of `preset` built with `model_cfg` (built now if missing or unfinished).
    overrides: "dataset.key=value" strings (as on the build_dataset command line). A build with
    fewer than `min_pairs` pairs (one global batch) fails and is not recorded as finished."""
    from t2i_align.data.builders.build import build
    from t2i_align.models.clip_tokenizer import cache_dir

    dataset = load_preset(preset)
    for item in overrides:
        key, _, value = item.partition("=")
        OmegaConf.update(dataset, key.removeprefix("dataset."), OmegaConf.from_dotlist([f"v={value}"]).v, merge=True)
    cfg = OmegaConf.create({"model": OmegaConf.to_container(model_cfg, resolve=True), "dataset": dataset,
                            "output_dir": None, "save_to_disk": False, "device": "auto"})
    settings = json.dumps([OmegaConf.to_container(cfg.dataset, resolve=True), _model_signature(model_cfg.path)],
                          sort_keys=True, default=str)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    out = cache_dir() / "datasets" / f"{preset}-{model_cfg.name}-{key}"
    if (out / "build_info.json").is_file():
        # Earlier versions recorded empty builds as finished: check them the same way.
        from t2i_align.data.builders.build import check_enough_pairs

        info = json.loads((out / "build_info.json").read_text())
        check_enough_pairs(out, {"rows": info.get("rows", 0), "planned": info.get("planned", 0)}, info.get("plan", {}),
                           min_pairs)
        return out
    cfg.output_dir = str(out)
    build(cfg, out.parent / f".run-{key}-{os.getpid()}", min_pairs=min_pairs)
    return out
