"""An offline Qwen-style tokenizer (byte-level BPE with Qwen3's chat template) built in code, for
the tiny FLUX.2 [klein] pipeline: Qwen3's hub tokenizer cannot be downloaded here, and the
pipeline only needs a tokenizer of the same class (Qwen2TokenizerFast, as Flux2KleinPipeline
declares) whose chat template renders a user turn as Qwen3's does.

The vocabulary: the 256 byte-level characters (GPT-2 / CLIP byte table, as Qwen's BPE), whole-word
tokens "Ġword" for the words the toy world and the tests use (left-to-right merge chains, so
only a word after a space merges; anything else tokenizes byte by byte), and Qwen3's special
tokens (<|endoftext|> = pad, <|im_start|>, <|im_end|>, <think>, </think>).

CHAT_TEMPLATE renders what Qwen3's template renders for system / user / assistant turns,
add_generation_prompt and enable_thinking=False (an empty think block after the assistant
header), which is how Flux2KleinPipeline._get_qwen3_prompt_embeds calls it (diffusers
pipeline_flux2_klein.py). Qwen3's tool-call and reasoning-content branches are left out.
"""

from __future__ import annotations

from .clip_tokenizer import _bytes_to_unicode
from .tiny_t5_tokenizer import WORDS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def byte_level_bpe(words, special_tokens) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab piece -> id, merges in rank order) of a byte-level BPE: the 256 byte characters, a
    whole-word piece "Ġword" for each of `words` (left-to-right merge chains from the leading
    space, so a word merges only after a space and nothing else is affected), then
    `special_tokens`."""
    table = _bytes_to_unicode()
    vocab = {char: i for i, char in enumerate(table.values())}
    merges = []
    for word in words:
        piece = table[ord(" ")]
        for char in "".join(table[b] for b in word.encode()):
            merged = piece + char
            if merged not in vocab:
                merges.append((piece, char))
                vocab[merged] = len(vocab)
            piece = merged
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab, merges


def qwen_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges): bytes, the whole-word pieces, then the special tokens (in Qwen3's order:
    <|endoftext|>, <|im_start|>, <|im_end|>, <think>, </think>)."""
    return byte_level_bpe(WORDS, SPECIAL_TOKENS)


def offline_qwen_tokenizer(model_max_length: int = 128):
    """A Qwen2TokenizerFast with the vocabulary above, Qwen3's special tokens and chat template
    (model_max_length: the tiny model's text length when model.max_sequence_length is not set)."""
    from transformers import Qwen2TokenizerFast

    vocab, merges = qwen_vocabulary()
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=model_max_length,
                                   additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
