"""toy_sdxl: an SDXL-shaped pipeline small enough to pretrain on a laptop CPU (see
scripts/pretrain_toy.py) and ship inside the package (fp16 safetensors).

Same classes as SDXL: AutoencoderKL (32x32x3 <-> 16x16x4), two CLIP text encoders with the real
CLIP tokenizer (hidden 32 and 64 + projection, penultimate states concatenated to 96), a
UNet2DConditionModel with SDXL's text_time add-embedding, EulerDiscreteScheduler. Sizes are
what a feasibility run found to pretrain in minutes on 2 CPU cores (README.md, The toy world).
"""

from __future__ import annotations

import pathlib

import torch
from t2i_align.errors import InputError, InputNotFoundError

TOY_PREFIX = "toy:"
TOY_WEIGHTS = pathlib.Path(__file__).parent / "weights"
TOY_RESOLUTION = 32
TOKEN_LENGTH = 16  # the toy captions are short; the pipeline accepts a shorter model_max_length
TE1_HIDDEN, TE2_HIDDEN, TIME_EMBED_DIM = 32, 64, 8
# Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
# SD's scaled-linear schedule keeps sqrt(abar_999) = 0.068 of the image at the last step, so the
# starting noise's mean leaks into the global brightness, which is exactly what the toy style is.
# Rescaled betas + v-prediction + trailing timesteps let the prompt, not the noise, pick the style.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        steps_offset=1, prediction_type="v_prediction", timestep_spacing="trailing",
                        rescale_betas_zero_snr=True)


def toy_vae(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=TOY_RESOLUTION,
                         scaling_factor=scaling_factor, mid_block_add_attention=False)


def toy_text_encoder(hidden: int, with_projection: bool, pad_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=TOKEN_LENGTH, hidden_act="gelu",
                            projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def toy_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TOY_RESOLUTION // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
        layers_per_block=1, attention_head_dim=(2, 4, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM, projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_HIDDEN)


def toy_tokenizers():
    from t2i_align.models.clip_tokenizer import offline_clip_tokenizer

    first, second = offline_clip_tokenizer(), offline_clip_tokenizer(pad_token="!")
    first.model_max_length = second.model_max_length = TOKEN_LENGTH
    return first, second


def assemble_pipeline(vae, text_encoder, text_encoder_2, unet):
    """A StableDiffusionXLPipeline from toy parts (the real tokenizer, SDXL's Euler scheduler)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = toy_tokenizers()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG), add_watermarker=False)


TOY_KINDS = ("sdxl", "sd3")  # toy_sdxl (this file), toy_sd3 (model_sd3.py)


def resolve_toy_path(path: str) -> str:
    """"toy:sdxl" / "toy:sd3" -> the shipped pretrained folder (clear error when the weights are missing)."""
    kind = path[len(TOY_PREFIX):]
    if kind not in TOY_KINDS:
        raise InputError(f"unknown toy model {path!r}; known: {', '.join(TOY_PREFIX + k for k in TOY_KINDS)}")
    folder = TOY_WEIGHTS / kind
    if not (folder / "model_index.json").is_file():
        raise InputNotFoundError(f"toy model weights missing at {folder}; make them with "
                                f"python scripts/pretrain_toy.py --family {kind} (about 30-60 minutes on 2 CPU cores)")
    return str(folder)


def encode_captions(text_encoder, text_encoder_2, ids_1: torch.Tensor, ids_2: torch.Tensor):
    """SDXL conditioning for token ids: (penultimate states of both encoders concatenated, pooled
    projection of the second), as StableDiffusionXLPipeline.encode_prompt computes it."""
    out_1 = text_encoder(ids_1, output_hidden_states=True)
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1), out_2.text_embeds
