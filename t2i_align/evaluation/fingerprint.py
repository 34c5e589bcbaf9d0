"""Content fingerprints of model weights, so cached evaluation images are keyed by what a model
is (its bytes), not by what it is called or where it lies.

What is hashed is what loading reads: a pipeline folder's model_index.json and the component
subfolders it lists; a UNet / VAE folder's config.json and weight files; a LoRA's weights file.
A hub id with no local folder is identified by its snapshot commit when the local Hugging Face
cache knows it (refs/<revision>), else by the id and revision as given.

Trade-off: every file gets its full sha256, no sampling. A sampled fingerprint (size + first,
last and a few middle chunks) costs O(1) but can miss a partial fine-tune whose changed tensors
all lie between the samples, which is the stale-image bug the key exists to prevent. A full hash
reads each file once (about what loading the model reads anyway; ~1.2 GB/s with SHA-NI, so
SDXL's 10 GB fp32 UNet takes ~8 s) and is remembered in a sidecar under
$T2I_ALIGN_CACHE/fingerprints/ keyed by the file's real path, size, mtime_ns, ctime_ns and
inode. Any write, rename or replacement of the file changes ctime or the inode, and neither can
be set back by user tools (touch -d sets mtime only), so a remembered hash is not stale; a copy
(other path) is hashed again and gets the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from t2i_align.errors import InputNotFoundError

SIDECAR_MIN_BYTES = 8 << 20  # smaller files are hashed every time (cheaper than a sidecar look-up)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
LORA_FILE = "pytorch_lora_weights.safetensors"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _sidecar(real: Path) -> Path:
    from t2i_align.models.clip_tokenizer import cache_dir

    name = hashlib.sha256(str(real).encode()).hexdigest()[:32]
    return cache_dir() / "fingerprints" / f"{name}.json"


def file_sha256(path) -> str:
    """Full sha256 of a file's bytes; for big files remembered by (real path, size, mtime_ns,
    ctime_ns, inode) so later calls cost one stat()."""
    real = Path(path).resolve()
    st = real.stat()
    stamp = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "inode": st.st_ino}
    side = _sidecar(real) if st.st_size >= SIDECAR_MIN_BYTES else None
    if side is not None and side.is_file():
        try:
            known = json.loads(side.read_text())
            if {k: known.get(k) for k in stamp} == stamp:
                return known["sha256"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable sidecar: hash again and rewrite it
    sha = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):  # hashlib.file_digest needs Python 3.11
            sha.update(block)
    digest = sha.hexdigest()
    if side is not None:
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            tmp = side.with_name(f".{side.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps({**stamp, "sha256": digest}))
            os.replace(tmp, side)
        except OSError:
            pass  # a read-only cache only costs re-hashing next time
    return digest


def files_fingerprint(root: Path, files: list[Path], with_names: bool = True) -> dict:
    """{"sha256", "files", "bytes"} of `files` (under `root`): one hash over the sorted (relative
    name, content hash) pairs, or over the content hashes alone when with_names is False."""
    entries = sorted((f.relative_to(root).as_posix() if with_names else "", file_sha256(f)) for f in files)
    combined = hashlib.sha256("".join(f"{name}\t{digest}\n" for name, digest in entries).encode()).hexdigest()
    return {"sha256": combined, "files": len(entries), "bytes": sum(f.stat().st_size for f in files)}


def _visible_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, skipping hidden files and folders (e.g. .cache/, .git/)."""
    return [p for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def pipeline_files(folder) -> list[Path]:
    """What from_pretrained reads from a diffusers pipeline folder: model_index.json and the
    component subfolders it names (all their files, every variant); every visible file when
    there is no model_index.json."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        return _visible_files(folder)
    components = [name for name, value in json.loads(index.read_text()).items()
                  if not name.startswith("_") and isinstance(value, list) and value[0] is not None]
    files = [index]
    for name in components:
        if (folder / name).is_dir():
            files += _visible_files(folder / name)
    return files


def component_files(folder) -> list[Path]:
    """A UNet / VAE folder's config.json and weight files (all variants)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))


def lora_files(path) -> list[Path]:
    """The file(s) load_lora_weights reads: the file itself, or in a folder
    pytorch_lora_weights.safetensors, else its .safetensors files, else its .bin files."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / LORA_FILE).is_file():
        return [path / LORA_FILE]
    for suffix in WEIGHT_SUFFIXES:
        found = sorted(p for p in path.glob(f"*{suffix}") if p.is_file())
        if found:
            return found
    raise InputNotFoundError(f"LoRA path {path} holds no .safetensors or .bin weights")


def hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit `revision` (default main) of a hub model resolves to in the local Hugging Face
    cache, or None when it was never downloaded. A 40-hex revision is a commit already."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a hub model at `revision`, or None."""
    commit = hub_commit(repo_id, revision)
    if commit is None:
        return None
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    return folder if folder.is_dir() else None
