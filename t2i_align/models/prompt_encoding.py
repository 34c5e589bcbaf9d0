"""Turn captions into the denoiser's text conditioning, exactly as the diffusers pipelines do.

Training must condition the model the same way inference does, or the aligned model is sampled
off-distribution. Each family encodes its own way (t2i_align/families/: sd.py, sdxl.py, with
SDXL's time ids); encode_prompts dispatches on the family's name.
"""

from __future__ import annotations


def encode_prompts(captions: list[str], text_encoders: list, tokenizers: list, family) -> dict:
    """Encode a batch of captions with frozen text encoders (no grad), as family's
    ``encode_prompts`` does (SD: ``{"encoder_hidden_states": [B, 77, D]}``; SDXL: also
    ``"text_embeds": [B, P]``). Tensors are on the (first) text encoder's device, in its dtype.
    family: a family name ("sd", "sdxl") or module."""
    from t2i_align.families import get_family

    if isinstance(captions, str):
        raise TypeError("encode_prompts expects a list of captions, got a single string")
    return get_family(family).encode_prompts(captions, text_encoders, tokenizers)
