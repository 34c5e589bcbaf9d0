"""An offline T5-style tokenizer (SentencePiece Unigram) built in code, for the tiny SD3 / FLUX
pipelines: T5's hub tokenizer cannot be downloaded here, and the models only need a tokenizer of
the same class and behaviour (T5TokenizerFast: "▁"-prefixed pieces, </s> appended, <pad> = 0).

The vocabulary: the three T5 special tokens (<pad> 0, </s> 1, <unk> 2, as in T5), "▁" alone,
every printable ASCII character, and "▁word" pieces for the words the toy world and the tests
use, with Unigram scores that prefer whole words. Anything else falls back to single characters
(unknown characters to <unk>), so every caption tokenizes.
"""

from __future__ import annotations

import string

WORDS = (
    "a an the of on in with and at to is style image photo picture painting drawing art "
    "red green blue yellow orange purple pink cyan white black grey gray beige dark bright "
    "circle square triangle shape background neon plain glow flat vivid dull textured "
    "cat dog fox boat house tree car sky snow city portrait landscape animated realistic "
    "pixel cartoon disney 8k sexual nudity"
).split()


def t5_vocabulary() -> list[tuple[str, float]]:
    """[(piece, log-probability score)] in id order."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -6.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + word, -3.0) for word in WORDS]
    seen, unique = set(), []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    return unique


def offline_t5_tokenizer(model_max_length: int = 256):
    """A T5TokenizerFast with the vocabulary above (no extra_ids sentinels)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=t5_vocabulary(), extra_ids=0, model_max_length=model_max_length)
