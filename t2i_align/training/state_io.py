"""Training state as safetensors + JSON: nothing here pickles or unpickles.

An optimizer / LR-schedule / grad-scaler state_dict is a tree of dicts, lists and tuples whose
leaves are tensors and plain scalars. ``to_json_tree`` replaces every tensor leaf with
``{"__tensor__": name}`` (the tensor goes into a safetensors file under that name), keeps
JSON-able leaves (None, bool, int, float, str) as they are, marks tuples (``{"__tuple__": [...]}``)
and dicts with non-string keys (``{"__dict__": [[key, value], ...]}``, e.g. the optimizer's
``state`` keyed by parameter index) so ``from_json_tree`` rebuilds the very same tree: same
types, same dtypes, same values (floats round-trip exactly through JSON's repr). Any other leaf
(a numpy scalar, a torch.dtype, an object) is refused at save time with the key that holds it.

Files (all in one checkpoint folder):
  optimizer.json                 the state_dict's structure, param_groups and scalar state
                                 (AdamW's betas, Adafactor's int step, ...), and the names of
                                 the safetensors file(s) holding its tensors
  optimizer.safetensors          its tensor leaves (exp_avg, AdamW's tensor step, 8-bit Adam's
                                 uint8 states and absmax, ...); split into
                                 optimizer-0000K-of-0000N.safetensors above `max_shard_bytes`
  lr_scheduler.json              the LR schedule's state_dict (LambdaLR: last_epoch, base_lrs,
                                 ...; its lr_lambdas are code, rebuilt by the recipe, so entries
                                 that are not JSON are dropped there)
  grad_scaler.json               the fp16 GradScaler's state (scale, growth tracker), if enabled
  rng_state.safetensors          every process's RNG states as integer tensors: torch CPU
                                 (uint8), CUDA per device (uint8), Python's random and numpy's
                                 legacy generator (int64 words; their few scalars in the
                                 file's metadata)
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from t2i_align.errors import InputError

log = logging.getLogger("t2i_align.train")

OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "lr_scheduler.json"
SCALER_JSON = "grad_scaler.json"
RNG_FILE = "rng_state.safetensors"
FORMAT = "t2i_align/state_io v1"

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"
_MARKERS = (_TENSOR, _TUPLE, _DICT)
_SCALARS = (type(None), bool, int, float, str)
DEFAULT_SHARD_BYTES = 4 << 30  # bounds the host memory safetensors needs while writing one file


class StateFormatError(InputError):
    """A state holds a leaf that is neither a tensor nor JSON-able, or a file does not match."""


def _key_str(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def to_json_tree(obj, tensors: dict | None = None, path: str = ""):
    """`obj` as a JSON-able tree. Tensor leaves go into `tensors` (name -> tensor; name = the
    leaf's dotted path) and are referenced by name; with `tensors=None` a tensor is an error."""
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise StateFormatError(f"{path or '<root>'}: a tensor where only JSON values are stored")
        name, n = path or "tensor", 1
        while name in tensors:  # e.g. keys 0 and "0" side by side
            name, n = f"{path}#{n}", n + 1
        tensors[name] = obj
        return {_TENSOR: name}
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [to_json_tree(v, tensors, _key_str(path, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_json_tree(v, tensors, _key_str(path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(type(k) is str for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: to_json_tree(v, tensors, _key_str(path, k)) for k, v in obj.items()}
        return {_DICT: [[to_json_tree(k, None, _key_str(path, "<key>")), to_json_tree(v, tensors, _key_str(path, k))]
                        for k, v in obj.items()]}
    raise StateFormatError(f"{path or '<root>'}: cannot store a {type(obj).__module__}.{type(obj).__qualname__} "
                           "without pickle (only tensors, None, bool, int, float, str, lists, tuples and dicts)")


def from_json_tree(tree, tensors: dict | None = None):
    """Inverse of to_json_tree: rebuild tuples, non-string-keyed dicts and tensors (from `tensors`)."""
    if isinstance(tree, list):
        return [from_json_tree(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if len(tree) == 1 and _TENSOR in tree:
            if tensors is None or tree[_TENSOR] not in tensors:
                raise StateFormatError(f"tensor {tree[_TENSOR]!r} is missing from the safetensors file(s)")
            return tensors[tree[_TENSOR]]
        if len(tree) == 1 and _TUPLE in tree:
            return tuple(from_json_tree(v, tensors) for v in tree[_TUPLE])
        if len(tree) == 1 and _DICT in tree:
            return {_hashable(from_json_tree(k)): from_json_tree(v, tensors) for k, v in tree[_DICT]}
        return {k: from_json_tree(v, tensors) for k, v in tree.items()}
    return tree


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _write_json(path: Path, tree) -> None:
    Path(path).write_text(json.dumps(tree, indent=1, allow_nan=True))


def _read_json(path: Path):
    return json.loads(Path(path).read_text())


def _unshared(tensors: dict) -> dict:
    """Detached, contiguous tensors; a tensor whose storage another one already uses is cloned
    (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        ptr = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t.contiguous()
    return out


def _shards(tensors: dict, max_bytes: int) -> list[list[str]]:
    shards, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_tensor_tree(state, folder, stem: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write `state` as <stem>.json (structure) + <stem>.safetensors (tensor leaves; sharded as
    <stem>-0000K-of-0000N.safetensors above max_shard_bytes)."""
    folder = Path(folder)
    tensors: dict = {}
    tree = to_json_tree(state, tensors)
    tensors = _unshared(tensors)
    groups = _shards(tensors, max_shard_bytes) if tensors else []
    files = []
    for i, names in enumerate(groups):
        file = f"{stem}.safetensors" if len(groups) == 1 else f"{stem}-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n].cpu() for n in names}, str(folder / file))
        files.append(file)
    _write_json(folder / f"{stem}.json", {"format": FORMAT, "tensor_files": files, "state": tree})


def read_tensor_tree(folder, stem: str):
    """The state written by save_tensor_tree (tensors on CPU)."""
    folder = Path(folder)
    doc = _read_json(folder / f"{stem}.json")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateFormatError(f"{folder / (stem + '.json')}: not a {FORMAT} file")
    tensors = {}
    for file in doc["tensor_files"]:
        tensors.update(load_file(str(folder / file)))
    return from_json_tree(doc["state"], tensors)


# Optimizer --------------------------------------------------------------------------------------

def save_optimizer_state(optimizer, folder, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """optimizer.json + optimizer.safetensors from optimizer.state_dict() (torch AdamW, transformers'
    Adafactor, bitsandbytes' 8-bit optimizers, accelerate's AcceleratedOptimizer wrapping one)."""
    save_tensor_tree(optimizer.state_dict(), folder, "optimizer", max_shard_bytes)


def read_optimizer_state(folder) -> dict:
    """The optimizer state_dict saved by save_optimizer_state (tensors on CPU)."""
    return read_tensor_tree(folder, "optimizer")


def load_optimizer_state(optimizer, folder) -> None:
    """Restore what save_optimizer_state wrote; load_state_dict moves the tensors to the
    parameters' device (as it does for a torch.load-ed state)."""
    optimizer.load_state_dict(read_optimizer_state(folder))


# LR schedule ------------------------------------------------------------------------------------

def scheduler_state_to_json(scheduler) -> dict:
    """The schedule's state_dict as JSON. LambdaLR stores, per lambda, None for a plain function
    (diffusers' get_scheduler: closures) or the callable's __dict__: entries of those that are not
    JSON are dropped (the recipe rebuilds the callables). Anything else must be JSON."""
    state = dict(scheduler.state_dict())
    lambdas = state.pop("lr_lambdas", None)
    tree = to_json_tree(state, None)
    if lambdas is not None:
        kept = []
        for i, entry in enumerate(lambdas):
            if isinstance(entry, dict):
                clean = {}
                for k, v in entry.items():
                    try:
                        clean[k] = to_json_tree(v, None, f"lr_lambdas.{i}.{k}")
                    except StateFormatError:
                        log.warning("LR schedule: lr_lambdas[%d].%s is not JSON; not saved (rebuilt by the recipe)",
                                    i, k)
                entry = clean
            elif entry is not None:
                entry = None
            kept.append(entry)
        tree["lr_lambdas"] = kept
    return tree


def scheduler_state_from_json(tree) -> dict:
    return from_json_tree(tree)


def save_scheduler_state(scheduler, folder) -> None:
    _write_json(Path(folder) / SCHEDULER_JSON, {"format": FORMAT, "state": scheduler_state_to_json(scheduler)})


def load_scheduler_state(scheduler, folder) -> None:
    doc = _read_json(Path(folder) / SCHEDULER_JSON)
    scheduler.load_state_dict(scheduler_state_from_json(doc["state"]))


# fp16 grad scaler -------------------------------------------------------------------------------

def save_scaler_state(scaler, folder) -> bool:
    """grad_scaler.json when `scaler` is an enabled GradScaler; returns whether it wrote one."""
    if scaler is None or not scaler.is_enabled():
        return False
    _write_json(Path(folder) / SCALER_JSON, {"format": FORMAT, "state": to_json_tree(scaler.state_dict(), None)})
    return True


def load_scaler_state(scaler, folder) -> bool:
    """Restore grad_scaler.json into `scaler` when both exist; returns whether it did."""
    path = Path(folder) / SCALER_JSON
    if scaler is None or not scaler.is_enabled():
        return False
    if not path.is_file():
        log.warning("%s has no %s: the fp16 grad scaler starts from its initial scale", folder, SCALER_JSON)
        return False
    scaler.load_state_dict(from_json_tree(_read_json(path)["state"]))
    return True


# RNG --------------------------------------------------------------------------------------------

def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states: (tensors, metadata). torch CPU and CUDA (each device) as uint8
    tensors, Python's random and numpy's legacy global generator as int64 words."""
    tensors = {"torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = state.clone()
    version, words, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(words, dtype=torch.int64)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta = {"python": json.dumps([version, gauss_next]),
            "numpy": json.dumps([name, int(pos), int(has_gauss), float(cached)])}
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Inverse of capture_rng_state (CUDA states only when CUDA is available)."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][:count])
    if "python" in tensors and "python" in meta:
        version, gauss_next = json.loads(meta["python"])
        random.setstate((version, tuple(int(w) for w in tensors["python"].tolist()), gauss_next))
    if "numpy" in tensors and "numpy" in meta:
        name, pos, has_gauss, cached = json.loads(meta["numpy"])
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_rng_states(per_process: list[tuple[dict, dict]], folder) -> None:
    """rng_state.safetensors holding every process's capture_rng_state(), keys rank<R>.<name>."""
    tensors, meta = {}, {"format": FORMAT, "num_processes": str(len(per_process))}
    for rank, (t, m) in enumerate(per_process):
        tensors.update({f"rank{rank}.{k}": v.contiguous() for k, v in t.items()})
        meta.update({f"rank{rank}.{k}": v for k, v in m.items()})
    save_file(tensors, str(Path(folder) / RNG_FILE), metadata=meta)


def load_rng_state(folder, rank: int = 0) -> None:
    """Restore process `rank`'s RNG states from rng_state.safetensors (rank 0's when the
    checkpoint was written by fewer processes)."""
    path = Path(folder) / RNG_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        saved = int(meta.get("num_processes", "1"))
        use = rank if rank < saved else 0
        if use != rank:
            log.warning("%s holds RNG states of %d process(es); process %d takes process 0's", path, saved, rank)
        prefix = f"rank{use}."
        tensors = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    restore_rng_state(tensors, {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)})
