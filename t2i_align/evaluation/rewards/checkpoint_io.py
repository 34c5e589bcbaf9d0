"""Reading reward-model weight files without unpickling anything unless the user asked for it.

``torch.load(..., weights_only=False)`` runs the pickle protocol, which can execute arbitrary code
from the file. Every reward loader therefore reads ``.safetensors`` with safetensors and torch
files with ``torch.load(..., weights_only=True)`` (tensors, dicts, lists, numbers, strings only).
Some released checkpoints also pickle Python objects beside the tensors (e.g. an
``argparse.Namespace`` of training arguments, an optimizer or a custom class); those fail the
safe load. They are then refused with a one-line :class:`PickleNotAllowedError` naming the file
and the opt-in, and unpickled only if the caller passes ``allow_pickle=<that file>`` (a path, or
a list of paths; the hub id the loader was given also counts as naming the file it downloaded).
A bare ``True`` is refused: the opt-in has to say WHICH file is trusted, so a config that
trusts one file does not silently trust the next one it is pointed at.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from typing import Any, Union

import torch
from t2i_align.errors import InputNotFoundError, UserError

__all__ = ["PickleNotAllowedError", "read_weights", "pickle_allowed"]

PathLike = Union[str, "os.PathLike[str]"]


class PickleNotAllowedError(UserError, RuntimeError):
    """A torch file needs pickle (it holds Python objects) and the caller did not name it in ``allow_pickle``."""


def _entries(allow_pickle) -> list[str]:
    if allow_pickle is None:
        return []
    if isinstance(allow_pickle, bool):
        raise TypeError("allow_pickle must name the trusted file(s) (a path or a list of paths), not a bool")
    if isinstance(allow_pickle, (str, os.PathLike)):
        return [os.fspath(allow_pickle)]
    if isinstance(allow_pickle, Iterable):
        out = []
        for entry in allow_pickle:
            if not isinstance(entry, (str, os.PathLike)) or isinstance(entry, bool):
                raise TypeError(f"allow_pickle entries must be paths, got {type(entry).__name__}")
            out.append(os.fspath(entry))
        return out
    raise TypeError(f"allow_pickle must be a path or a list of paths, got {type(allow_pickle).__name__}")


def _canonical(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def pickle_allowed(path: PathLike, allow_pickle=None, aliases: Iterable[str] = ()) -> bool:
    """True when ``allow_pickle`` names ``path`` (same file after resolving ``~``, ``..`` and links)
    or one of ``aliases`` (e.g. the hub id the file was downloaded for)."""
    target = _canonical(os.fspath(path))
    alias_set = {str(a) for a in aliases}
    return any(entry in alias_set or _canonical(entry) == target for entry in _entries(allow_pickle))


def _reason(err: Exception) -> str:
    """The informative line of torch's multi-line weights-only error (e.g. the offending global)."""
    text = str(err)
    found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|Unsupported class [\w.]+)", text)
    if found:
        return found.group(1)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]


def read_weights(path: PathLike, allow_pickle=None, aliases: Iterable[str] = (), device: str = "cpu") -> Any:
    """The object stored in a weight file: a ``.safetensors`` file's tensors, or a torch file's
    content loaded with ``weights_only=True``.

    A torch file that needs pickle raises :class:`PickleNotAllowedError` unless ``allow_pickle``
    names it (see :func:`pickle_allowed`), in which case it is loaded with ``weights_only=False``.
    ``allow_pickle`` is validated even when the file turns out not to need it.
    """
    path = os.fspath(path)
    _entries(allow_pickle)  # reject a bare True early, whatever the file holds
    if not os.path.isfile(path):
        raise InputNotFoundError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device=device)
    if pickle_allowed(path, allow_pickle, aliases):
        return torch.load(path, map_location=device, weights_only=False)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # a damaged file, not a refusal: let it through
            raise
        # the weights-only unpickler met something that is not a tensor / container / number
        reason = _reason(err)
        what = "needs pickle to load" if "global" in reason or "class" in reason else "needs pickle (or is damaged)"
        raise PickleNotAllowedError(
            f"{path} {what} ({reason}); unpickling can run arbitrary code, so it is only done on request: "
            f"if you trust this file, pass allow_pickle={path!r} to the loader"
        ) from None


def locate_checkpoint(checkpoint, hub_repo: str, filename: str, default, what: str, argument: str,
                      where: str) -> tuple["os.PathLike", tuple[str, ...]]:
    """(local path, aliases) of a reward checkpoint given as a path, None (``default``) or
    ``hub_repo`` (downloaded with huggingface_hub, and then ``hub_repo`` is an alias the pickle
    opt-in may name). A missing file is a one-line error saying where to get it (``where``) and
    which argument takes it."""
    import pathlib

    aliases: tuple[str, ...] = ()
    if checkpoint == hub_repo:
        from huggingface_hub import hf_hub_download

        checkpoint, aliases = hf_hub_download(hub_repo, filename), (hub_repo,)
    path = pathlib.Path(checkpoint) if checkpoint is not None else pathlib.Path(default)
    if not path.is_file():
        raise InputNotFoundError(f"{what} checkpoint not found at {path}; download {filename} from {where} and pass "
                                f"{argument}= (or place it at {default}, or pass {argument}={hub_repo!r})")
    return path, aliases
