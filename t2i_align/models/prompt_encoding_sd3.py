"""SD3 / SD3.5 prompt encoding for training, the same tensors StableDiffusion3Pipeline.encode_prompt
makes (diffusers 0.42): each CLIP's penultimate hidden states (CLIP-L 768 + OpenCLIP-bigG 1280,
77 tokens each, padded to the tokenizer's model_max_length) concatenated on the feature axis and zero-padded to the T5
width (4096), then the T5 tokens (`max_sequence_length`, 256 in the pipeline) appended on the
sequence axis; pooled = both CLIPs' projected text embeddings concatenated (2048). Without T5
(the pipeline's text_encoder_3=None, to save ~10 GB) the T5 part is zeros of the same shape, as
the pipeline does. Per caption: (77 + max_sequence_length) x 4096 + 2048 numbers, 2.7 MB in
fp16 at max_sequence_length 256 (that is what a latent cache stores per unique caption).
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError


def _clip_states(text_encoder, tokenizer, captions: list[str], device):
    # The pipeline pads CLIP to tokenizer.model_max_length (77 for SD3; 16 for the toy model).
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    out = text_encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # penultimate states, projected pooled embedding


def encode_sd3_prompts(captions: list[str], text_encoders, tokenizers, max_sequence_length: int = 256,
                       joint_attention_dim: int | None = None) -> dict[str, torch.Tensor]:
    """{"encoder_hidden_states": [B, 77 + L, D], "pooled_projections": [B, P]}.

    text_encoders / tokenizers: [CLIP-L, OpenCLIP-bigG, T5] (T5 may be None or absent: zeros of
    width `joint_attention_dim`, which is then required)."""
    if isinstance(captions, str):
        raise InputError("encode_sd3_prompts expects a list of captions, got a single string")
    if len(text_encoders) < 2 or len(tokenizers) < 2:
        raise InputError(f"SD3 needs two CLIP text encoders (+ T5); got {len(text_encoders)} encoders")
    device = text_encoders[0].device
    states_1, pooled_1 = _clip_states(text_encoders[0], tokenizers[0], captions, device)
    states_2, pooled_2 = _clip_states(text_encoders[1], tokenizers[1], captions, device)
    clip_states = torch.cat([states_1, states_2], dim=-1)
    t5 = text_encoders[2] if len(text_encoders) > 2 else None
    if t5 is not None:
        ids = tokenizers[2](captions, padding="max_length", max_length=max_sequence_length, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids.to(t5.device)
        t5_states = t5(ids)[0]
    else:
        if joint_attention_dim is None:
            raise InputError("without T5, encode_sd3_prompts needs joint_attention_dim (the transformer's config)")
        t5_states = torch.zeros(len(captions), max_sequence_length, joint_attention_dim, device=device,
                                dtype=clip_states.dtype)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
    return {"encoder_hidden_states": torch.cat([clip_states, t5_states.to(clip_states.dtype)], dim=-2),
            "pooled_projections": torch.cat([pooled_1, pooled_2], dim=-1)}


class AbsentT5(torch.nn.Module):
    """The T5 slot when training without T5 (model.use_t5=false): no weights; `width` (the
    transformer's joint_attention_dim) and `length` (T5 tokens) say what zeros the pipeline feeds
    in its place. A module so that the loop's .to() / freezing treat it like any encoder."""

    def __init__(self, width: int, length: int):
        super().__init__()
        self.width, self.length = int(width), int(length)

    def forward(self, *args, **kwargs):
        raise InputError("AbsentT5 has no weights: encode with encode_sd3_prompts(..., joint_attention_dim=width)")
