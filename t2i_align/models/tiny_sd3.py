"""A tiny, seeded random-weight SD3.5-shaped pipeline (StableDiffusion3Pipeline) for tests.

Same classes as SD3 / SD3.5 (diffusers' own SD3 pipeline tests use this pattern), very small
widths, built for 32 x 32 pixel images:
- SD3Transformer2DModel, 2 layers, patch 2, 16 input channels, SD3.5's dual-attention (attn2)
  in layer 0 and RMS qk-norm, so SD3.5-only code paths (attn2 LoRA targets) are exercised;
- two CLIPTextModelWithProjection (hidden 32 and 48: different widths catch mix-ups) with the
  real CLIP vocabulary and offline BPE tokenizer (clip_tokenizer.py); pooled = 32 + 48 = 80;
- a tiny T5EncoderModel (d_model 96 = joint_attention_dim, so the concatenated CLIP states, 80,
  are zero-padded to it as the pipeline does) with the offline Unigram tokenizer
  (tiny_t5_tokenizer.py);
- a 16-channel AutoencoderKL (no quant convs, as SD3's) with SD3's scaling and shift factors
  (1.5305, 0.0609), 32 x 32 x 3 <-> 16 x 16 x 16;
- FlowMatchEulerDiscreteScheduler with SD3's static shift 3.0.
"""

from __future__ import annotations

import torch

from .clip_tokenizer import offline_clip_tokenizer
from .tiny_t5_tokenizer import offline_t5_tokenizer

SEED = 0
RESOLUTION = 32
CLIP_HIDDEN = (32, 48)
T5_HIDDEN = 96
LATENT_CHANNELS = 16
SCALING_FACTOR = 1.5305
SHIFT_FACTOR = 0.0609


def _clip(hidden: int, pad_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                            projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_token_id)
    torch.manual_seed(SEED)
    return CLIPTextModelWithProjection(config).eval()


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=T5_HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(SEED)
    return T5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
                         layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8,
                         sample_size=RESOLUTION, scaling_factor=SCALING_FACTOR, shift_factor=SHIFT_FACTOR,
                         use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)


def _transformer():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(SEED)
    return SD3Transformer2DModel(sample_size=RESOLUTION // 2, patch_size=2, in_channels=LATENT_CHANNELS,
                                 num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                 joint_attention_dim=T5_HIDDEN, caption_projection_dim=32,
                                 pooled_projection_dim=sum(CLIP_HIDDEN), out_channels=LATENT_CHANNELS,
                                 pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")


def build_tiny_sd3_pipeline():
    """The tiny StableDiffusion3Pipeline; identical weights on every call, global RNG restored."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    with torch.random.fork_rng(devices=[]):
        tokenizer_3 = offline_t5_tokenizer()
        return StableDiffusion3Pipeline(
            transformer=_transformer(),
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            vae=_vae(),
            text_encoder=_clip(CLIP_HIDDEN[0], pad_token_id=49407),
            tokenizer=offline_clip_tokenizer(),
            text_encoder_2=_clip(CLIP_HIDDEN[1], pad_token_id=0),
            tokenizer_2=offline_clip_tokenizer(pad_token="!"),
            text_encoder_3=_t5(len(tokenizer_3)),
            tokenizer_3=tokenizer_3,
        )
