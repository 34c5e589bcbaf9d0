"""FLUX.1 prompt encoding for training, the same tensors FluxPipeline.encode_prompt makes (diffusers
0.42): the T5 encoder's last hidden states (`max_sequence_length` tokens, padded to it; 512 in the
pipeline and in train_dreambooth_lora_flux.py) are the transformer's encoder_hidden_states, and
the CLIP-L text encoder's pooler_output (77 tokens, padded to the tokenizer's model_max_length) is
pooled_projections. FLUX has no T5-less mode: T5 is the only token sequence the transformer sees.
The text position ids (txt_ids) are zeros, made from the sequence length when conditioning.
Per caption: 512 x 4096 + 768 numbers, 4.2 MB in fp16 (what a latent cache stores per unique
caption at the default length).
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError


def encode_flux_prompts(captions: list[str], text_encoders, tokenizers,
                        max_sequence_length: int = 512) -> dict[str, torch.Tensor]:
    """{"encoder_hidden_states": [B, L, D_t5], "pooled_projections": [B, D_clip]}.

    text_encoders / tokenizers: [CLIP-L (CLIPTextModel), T5EncoderModel] and their tokenizers."""
    if isinstance(captions, str):
        raise InputError("encode_flux_prompts expects a list of captions, got a single string")
    if len(text_encoders) != 2 or len(tokenizers) != 2 or text_encoders[1] is None:
        raise InputError(f"FLUX needs a CLIP text encoder and T5, got {len(text_encoders)} encoders "
                         "(load the parts with load_parts)")
    clip, t5 = text_encoders
    clip_tokenizer, t5_tokenizer = tokenizers
    ids = clip_tokenizer(captions, padding="max_length", max_length=clip_tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(clip.device)
    pooled = clip(ids, output_hidden_states=False).pooler_output
    ids = t5_tokenizer(captions, padding="max_length", max_length=max_sequence_length, truncation=True,
                       return_tensors="pt").input_ids.to(t5.device)
    states = t5(ids, output_hidden_states=False)[0]
    return {"encoder_hidden_states": states, "pooled_projections": pooled.to(states.device)}
