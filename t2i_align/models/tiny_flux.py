"""A tiny, seeded random-weight FLUX.1-dev-shaped pipeline (FluxPipeline) for tests.

Same classes as FLUX.1-dev (diffusers' own FLUX pipeline tests use this pattern), very small
widths, built for 32 x 32 pixel images:
- FluxTransformer2DModel: one double-stream and one single-stream block, patch_size 1 on the
  pipeline's 2x2-packed latents (in_channels 4 latent channels x 4 = 16), 2 heads of 16 with
  rotary axes (4, 4, 8) summing to the head width, and guidance_embeds=True, so FLUX.1-dev's
  guidance-distilled code path (the `guidance` input) is exercised;
- a CLIPTextModel (hidden 32, pooler_output = pooled_projections) with the real CLIP vocabulary
  and offline BPE tokenizer (clip_tokenizer.py, model_max_length 77 as the pipeline pads to);
- a tiny T5EncoderModel (d_model 48 = joint_attention_dim; a width other than CLIP's catches
  mix-ups) with the offline Unigram tokenizer (tiny_t5_tokenizer.py);
- a 4-channel AutoencoderKL (no quant convs, as FLUX's) with FLUX.1's shift and scaling factors
  (0.1159, 0.3611), 32 x 32 x 3 <-> 16 x 16 x 4 latents, packed to 8 x 8 = 64 image tokens;
- FlowMatchEulerDiscreteScheduler with FLUX.1-dev's dynamic shifting (base_shift 0.5, max_shift
  1.15, base / max image sequence length 256 / 4096; the static shift 3.0 is then unused).
"""

from __future__ import annotations

import torch

from .clip_tokenizer import offline_clip_tokenizer
from .tiny_t5_tokenizer import offline_t5_tokenizer

SEED = 0
RESOLUTION = 32
CLIP_HIDDEN = 32
T5_HIDDEN = 48
LATENT_CHANNELS = 4
SCALING_FACTOR = 0.3611  # FLUX.1's VAE (black-forest-labs/FLUX.1-dev vae/config.json)
SHIFT_FACTOR = 0.1159
# FLUX.1-dev's scheduler/scheduler_config.json
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=CLIP_HIDDEN, intermediate_size=2 * CLIP_HIDDEN,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=CLIP_HIDDEN, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(SEED)
    return CLIPTextModel(config).eval()


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
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(SEED)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_HIDDEN,
                                  pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 4, 8))


def build_tiny_flux_pipeline():
    """The tiny FluxPipeline; identical weights on every call, global RNG restored."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    with torch.random.fork_rng(devices=[]):
        tokenizer_2 = offline_t5_tokenizer()
        return FluxPipeline(
            transformer=_transformer(),
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
            vae=_vae(),
            text_encoder=_clip(),
            tokenizer=offline_clip_tokenizer(),
            text_encoder_2=_t5(len(tokenizer_2)),
            tokenizer_2=tokenizer_2,
        )
