"""An offline Mistral-style processor (PixtralProcessor around a byte-level BPE tokenizer) built in
code, for the tiny FLUX.2 [dev] pipeline: Flux2Pipeline declares an AutoProcessor as its tokenizer
and calls its chat template on batches of [system, user] turns whose contents are lists of
{"type": "text"} parts (diffusers pipeline_flux2.py format_input); the hub's Mistral Small 3.1
processor cannot be downloaded here.

The vocabulary: the byte-level BPE of tiny_qwen_tokenizer.py, with whole-word pieces for the toy
world's words and those of Flux2Pipeline's system message (so a prompt costs about 40 tokens, not
150), and Mistral's control tokens (<s>, </s>, [INST], [/INST], [SYSTEM_PROMPT], [/SYSTEM_PROMPT],
the image tokens, <pad>). CHAT_TEMPLATE renders "<s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]user
[/INST]" as Mistral Small 3.1's template does for text-only turns; its image and tool branches
are left out.
"""

from __future__ import annotations

import re

from .tiny_qwen_tokenizer import byte_level_bpe
from .tiny_t5_tokenizer import WORDS

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                  "[IMG_BREAK]", "[IMG_END]", "<pad>")
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def _words() -> list[str]:
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    return list(dict.fromkeys(list(WORDS) + re.findall(r"[A-Za-z]+", SYSTEM_MESSAGE)))


def offline_mistral_processor(model_max_length: int = 256):
    """A PixtralProcessor (patch size 16, spatial merge 2, as Mistral Small 3.1's) whose tokenizer
    is the byte-level BPE above (model_max_length: the tiny model's text length)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    vocab, merges = byte_level_bpe(_words(), SPECIAL_TOKENS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=list(SPECIAL_TOKENS[3:10]),
                                        model_max_length=model_max_length)
    return PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tokenizer, patch_size=16,
                            spatial_merge_size=2, chat_template=CHAT_TEMPLATE)
