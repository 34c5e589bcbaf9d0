"""FLUX.2 prompt encoding for training, the same tensors the FLUX.2 pipelines' encode_prompt make
(diffusers 0.42): the text encoder runs on the chat-templated prompt padded to
`max_sequence_length` tokens (512 in the pipelines and in train_dreambooth_lora_flux2*.py), and
the hidden states of three of its layers are stacked per token ([B, L, 3 x hidden]): the
transformer's encoder_hidden_states. There is no pooled embedding and no text mask; the text
position ids (0, 0, 0, l) are made from the sequence length when conditioning.

- FLUX.2 [klein] (Flux2KleinPipeline._get_qwen3_prompt_embeds): Qwen3ForCausalLM, layers
  (9, 18, 27); each prompt is one user turn, rendered by the tokenizer's chat template with
  add_generation_prompt=True and enable_thinking=False, then tokenized alone. (The diffusers
  klein LoRA script's --text_encoder_out_layers default is [10, 20, 30], the dev pipeline's
  layers; we follow the pipeline, which is what samples.)
- FLUX.2 [dev] (Flux2Pipeline._get_mistral_3_small_prompt_embeds): Mistral3ForConditionalGeneration,
  layers (10, 20, 30); each prompt ("[IMG]" removed) is a user turn after the pipeline's system
  message, the batch rendered and tokenized by the processor's chat template at once, without a
  generation prompt.
"""

from __future__ import annotations

import torch

from t2i_align.errors import InputError

KLEIN_LAYERS = (9, 18, 27)  # Flux2KleinPipeline.encode_prompt's text_encoder_out_layers default
DEV_LAYERS = (10, 20, 30)  # Flux2Pipeline.encode_prompt's


def text_model_kind(text_encoder) -> str:
    """"klein" (a Qwen3 text encoder) or "dev" (Mistral3), from the encoder's config model_type."""
    model_type = getattr(getattr(text_encoder, "config", None), "model_type", None)
    if model_type == "qwen3":
        return "klein"
    if model_type == "mistral3":
        return "dev"
    raise InputError(f"FLUX.2 takes a Qwen3 (klein) or Mistral3 (dev) text encoder, got {type(text_encoder).__name__} "
                     f"(model_type {model_type!r})")


def _klein_ids(captions: list[str], tokenizer, max_sequence_length: int) -> dict:
    ids, masks = [], []
    for caption in captions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": caption}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(text, return_tensors="pt", padding="max_length", truncation=True,
                           max_length=max_sequence_length)
        ids.append(inputs["input_ids"])
        masks.append(inputs["attention_mask"])
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


def _dev_ids(captions: list[str], processor, max_sequence_length: int) -> dict:
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    inputs = processor.apply_chat_template(format_input(prompts=captions, system_message=SYSTEM_MESSAGE),
                                           add_generation_prompt=False, tokenize=True, return_dict=True,
                                           return_tensors="pt", padding="max_length", truncation=True,
                                           max_length=max_sequence_length)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def encode_flux2_prompts(captions: list[str], text_encoder, tokenizer, max_sequence_length: int = 512,
                         layers: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """{"encoder_hidden_states": [B, L, len(layers) x hidden]}; layers None: the pipeline's
    default for the encoder's kind (klein (9, 18, 27), dev (10, 20, 30))."""
    if isinstance(captions, str):
        raise InputError("encode_flux2_prompts expects a list of captions, got a single string")
    kind = text_model_kind(text_encoder)
    layers = tuple(layers or (KLEIN_LAYERS if kind == "klein" else DEV_LAYERS))
    inputs = (_klein_ids if kind == "klein" else _dev_ids)(list(captions), tokenizer, max_sequence_length)
    device = text_encoder.device
    output = text_encoder(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                          output_hidden_states=True, use_cache=False)
    if max(layers) >= len(output.hidden_states):
        raise InputError(f"FLUX.2 stacks text-encoder hidden layers {layers}, but the encoder has only "
                         f"{len(output.hidden_states) - 1} layers")
    stacked = torch.stack([output.hidden_states[k] for k in layers], dim=1).to(text_encoder.dtype)
    batch, count, length, hidden = stacked.shape
    return {"encoder_hidden_states": stacked.permute(0, 2, 1, 3).reshape(batch, length, count * hidden)}
