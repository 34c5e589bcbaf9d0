"""An offline CLIP tokenizer built from the BPE file that open_clip ships.

Why: tests and tiny models must never touch the HF hub, yet SDXL / SD need a real
``transformers.CLIPTokenizer`` (49408 tokens). open_clip_torch bundles
``bpe_simple_vocab_16e6.txt.gz``, from which the exact ``vocab.json`` + ``merges.txt`` of
OpenAI's CLIP tokenizer can be derived (the same construction as open_clip's
``SimpleTokenizer``), so token ids are identical to open_clip's and to the hub tokenizers.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import tempfile
from t2i_align.errors import InputError, InputNotFoundError, MissingDependencyError

CACHE_ENV = "T2I_ALIGN_CACHE"
CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2  # merge lines used by OpenAI CLIP (after the header line)
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_FILES = ("vocab.json", "merges.txt")


def cache_dir() -> pathlib.Path:
    """Root folder for t2i_align's derived files (tokenizer files, tiny models).

    ``$T2I_ALIGN_CACHE`` if set, else ``~/.cache/t2i_align``. Not created here.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "t2i_align"


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP / GPT-2 reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bundled_bpe_path() -> pathlib.Path:
    """Path of open_clip's bundled BPE merges file (clear error if open_clip is missing)."""
    try:
        import open_clip  # noqa: F401  (only to locate the package folder)
    except ImportError as err:  # pragma: no cover - open_clip is a hard dependency
        raise MissingDependencyError(
            "offline_clip_tokenizer needs open_clip_torch (for bpe_simple_vocab_16e6.txt.gz); "
            "install it with `pip install open_clip_torch`"
        ) from err
    path = pathlib.Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise InputNotFoundError(f"open_clip's BPE file is missing: {path}")
    return path


def _build_vocab_and_merges(bpe_path: pathlib.Path) -> tuple[dict[str, int], list[str]]:
    """Derive (vocab, merge lines) exactly as open_clip's SimpleTokenizer does."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merge_lines = lines[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in merge_lines]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += list(_SPECIAL_TOKENS)
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise InputError(f"derived CLIP vocab has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE} ({bpe_path})")
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(m) for m in merges]


def _tokenizer_files_dir() -> pathlib.Path:
    """Write vocab.json + merges.txt once into the cache (atomically) and return the folder."""
    target = cache_dir() / "clip_tokenizer"
    if all((target / name).is_file() for name in _FILES):
        return target
    vocab, merges = _build_vocab_and_merges(_bundled_bpe_path())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".clip_tokenizer-", dir=target.parent))
    try:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        # The first line of merges.txt is a header that the loader skips.
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race (or a stale partial folder exists).
            if not all((target / name).is_file() for name in _FILES):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def offline_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A ``transformers.CLIPTokenizer`` with OpenAI CLIP's vocabulary, built without the hub.

    ``pad_token="<|endoftext|>"`` matches SD / SDXL's first tokenizer; SDXL's
    ``tokenizer_2`` pads with ``"!"`` (id 0, like open_clip). Ids equal open_clip's
    ``SimpleTokenizer`` for ordinary text up to the end-of-text token (open_clip pads with
    id 0 and additionally runs ftfy + html-unescape, which transformers' CLIP tokenizer, like
    the hub ones, does not).

    Quirk kept on purpose (the hub SDXL ``tokenizer_2`` has it too): with ``pad_token="!"``
    the ``"!"`` becomes a special token, so a ``"!"`` inside the text encodes as id 0
    instead of open_clip's ``"!</w>"`` (256).
    """
    from transformers import CLIPTokenizer

    folder = _tokenizer_files_dir()
    return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length, pad_token=pad_token)
