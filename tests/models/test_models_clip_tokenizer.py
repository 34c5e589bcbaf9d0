import os

import pytest
import torch

from t2i_align.models.clip_tokenizer import cache_dir, offline_clip_tokenizer

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT,   sitting on a mat; it's (very) cute... #cats @home 123 4.5",
    "café crème brûlée, naïve façade",
    "日本の猫 🐱 and ÅÄÖ ß",
    "tab\tand\nnewline   spaces",
    "",
    "word " * 120,  # longer than 77 tokens: truncated, last token end-of-text
]


@pytest.fixture(scope="module")
def open_clip_tok():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def test_vocab_size_and_special_tokens():
    tok = offline_clip_tokenizer()
    assert len(tok) == 49408
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok.pad_token_id == 49407 and tok.model_max_length == 77
    tok2 = offline_clip_tokenizer(pad_token="!")
    assert tok2.pad_token_id == 0 and len(tok2) == 49408


def test_ids_match_open_clip(open_clip_tok):
    import open_clip

    tok = offline_clip_tokenizer()
    ours = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    theirs = open_clip.tokenize(TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), 77)
    for text, a, b in zip(TEXTS, ours, theirs):
        n = int((b != 0).sum())  # open_clip pads with 0 after end-of-text
        assert a[:n].tolist() == b[:n].tolist(), text
        assert (a[n:] == 49407).all(), text
        # also against SimpleTokenizer.encode directly (no special tokens)
        if n < 77:
            assert tok(text).input_ids[1:-1] == open_clip_tok.encode(text)
    assert ours[-1, -1] == 49407 and ours[-1, 0] == 49406  # truncated text ends with end-of-text


def test_bang_padded_tokenizer_equals_open_clip_exactly():
    import open_clip

    texts = [t for t in TEXTS if "!" not in t]
    tok2 = offline_clip_tokenizer(pad_token="!")
    ours = tok2(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours, open_clip.tokenize(texts))


def test_files_written_once_into_cache(t2i_cache):
    assert cache_dir() == t2i_cache
    offline_clip_tokenizer()
    folder = t2i_cache / "clip_tokenizer"
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    stamp = os.stat(folder / "vocab.json").st_mtime_ns
    offline_clip_tokenizer(model_max_length=10)
    assert os.stat(folder / "vocab.json").st_mtime_ns == stamp
    assert not [p for p in t2i_cache.iterdir() if p.name.startswith(".clip_tokenizer-")]  # no temp leftovers


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("T2I_ALIGN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "t2i_align"
