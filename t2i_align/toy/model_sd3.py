"""toy_sd3: an SD3.5-shaped flow-matching pipeline for the toy world, small enough to pretrain on
a laptop CPU (scripts/pretrain_toy.py --family sd3) and ship inside the package like toy_sdxl.

Same classes as SD3.5 (StableDiffusion3Pipeline): SD3Transformer2DModel with a dual-attention
first layer and RMS qk-norm; two CLIPTextModelWithProjection (hidden 32 and 64, the real CLIP
tokenizer, 16 tokens) whose penultimate states concatenate to 96 = the T5 width, and whose
projections give the 96-wide pooled embedding; a tiny T5EncoderModel (d_model 96) with the
offline Unigram tokenizer (models/tiny_t5_tokenizer.py), 16 tokens; FlowMatchEulerDiscrete with
SD3's static shift 3.0. The VAE is toy_sdxl's (the same world, 32x32x3 <-> 16x16x4), with SD3's
latent normalisation (x - shift_factor) * scaling_factor fitted to its latents, so the
transformer takes 4 latent channels where SD3 takes 16.
"""

from __future__ import annotations

import torch

TOKEN_LENGTH = 16  # CLIP and T5 token lengths (the toy captions are short)
CLIP_HIDDEN = (32, 64)
T5_HIDDEN = 96  # = sum(CLIP_HIDDEN): the concatenated CLIP states need no zero padding
SHIFT = 3.0  # SD3 / SD3.5's static shift
LATENT_CHANNELS = 4


def toy_sd3_transformer(num_layers: int = 6, heads: int = 4, head_dim: int = 16):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=num_layers,
                                 attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=T5_HIDDEN,
                                 caption_projection_dim=heads * head_dim, pooled_projection_dim=sum(CLIP_HIDDEN),
                                 out_channels=LATENT_CHANNELS, pos_embed_max_size=16, dual_attention_layers=(0,),
                                 qk_norm="rms_norm")


def toy_clip(hidden: int, pad_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=TOKEN_LENGTH, hidden_act="gelu",
                            projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_token_id)
    return CLIPTextModelWithProjection(config)


def toy_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=T5_HIDDEN, d_kv=16, d_ff=2 * T5_HIDDEN, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    return T5EncoderModel(config)


def toy_sd3_tokenizers():
    """[CLIP, CLIP (pad "!"), T5] tokenizers, 16 tokens each."""
    from t2i_align.models.clip_tokenizer import offline_clip_tokenizer
    from t2i_align.models.tiny_t5_tokenizer import offline_t5_tokenizer

    return [offline_clip_tokenizer(model_max_length=TOKEN_LENGTH),
            offline_clip_tokenizer(model_max_length=TOKEN_LENGTH, pad_token="!"),
            offline_t5_tokenizer(model_max_length=TOKEN_LENGTH)]


def toy_sd3_text_encoders():
    """[CLIP 32, CLIP 64, T5 96] at their random init (the pretraining trains them jointly)."""
    t5_vocab = len(toy_sd3_tokenizers()[2])
    return [toy_clip(CLIP_HIDDEN[0], pad_token_id=49407), toy_clip(CLIP_HIDDEN[1], pad_token_id=0), toy_t5(t5_vocab)]


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)


def assemble_sd3_pipeline(vae, text_encoders, transformer):
    """A StableDiffusion3Pipeline from toy parts."""
    from diffusers import StableDiffusion3Pipeline

    tok_1, tok_2, tok_3 = toy_sd3_tokenizers()
    te_1, te_2, te_3 = text_encoders
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler(), vae=vae, text_encoder=te_1,
                                    tokenizer=tok_1, text_encoder_2=te_2, tokenizer_2=tok_2, text_encoder_3=te_3,
                                    tokenizer_3=tok_3)


@torch.no_grad()
def fit_latent_factors(vae, raw_means: torch.Tensor) -> tuple[float, float]:
    """(scaling_factor, shift_factor) making (x - shift) * scale zero-mean unit-variance over the
    raw VAE latents `raw_means` (how SD3's factors normalise its VAE's latents)."""
    shift = raw_means.mean().item()
    return 1.0 / (raw_means - shift).std().item(), shift
