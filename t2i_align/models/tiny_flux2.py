"""Tiny, seeded random-weight FLUX.2 [klein]- and [dev]-shaped pipelines (Flux2KleinPipeline,
Flux2Pipeline) for tests.

Same classes as FLUX.2 [klein] (diffusers pipeline_flux2_klein.py; diffusers' own klein pipeline
tests use this pattern), very small widths, built for 32 x 32 pixel images:
- Flux2Transformer2DModel: one double-stream and one single-stream block, patch_size 1 on the
  pipeline's packed tokens (the 2x2-patchified latents: 4 latent channels x 4 = 16 per token), 2
  heads of 16 with the four rotary axes (T, H, W, L) of 4 each, no guidance embedding
  (guidance_embeds false, as klein: its pipeline passes guidance=None);
- a Qwen3ForCausalLM text encoder (hidden 16) with 28 layers, so the pipeline's default hidden
  layers (9, 18, 27), stacked into 3 x 16 = 48 = joint_attention_dim, exist unchanged; with the
  offline byte-level BPE tokenizer and Qwen3's chat template (tiny_qwen_tokenizer.py,
  model_max_length 128 as the tiny text length);
- an AutoencoderKLFlux2 with 4 latent channels (32 in FLUX.2) and one 2x downsampling: 32 x 32 x 3
  <-> 16 x 16 x 4 latents, patchified to 16 x 8 x 8 (64 image tokens) and normalised by the VAE's
  BatchNorm running statistics, which are set to seeded non-trivial values (mean ~ 0.3 N(0, 1),
  variance in [0.25, 4]) so that normalisation errors show;
- FlowMatchEulerDiscreteScheduler with dynamic shifting (the pipeline passes mu from
  compute_empirical_mu, which only a dynamic-shifting scheduler takes), otherwise FLUX.1-dev's
  values; not checked against the hub's FLUX.2 scheduler config.
The [dev] variant (build_tiny_flux2_dev_pipeline) swaps in what differs: a
Mistral3ForConditionalGeneration text encoder (hidden 16, 32 layers for the pipeline's layers
10 / 20 / 30, a one-layer Pixtral vision tower that text-only prompts never use) with the offline
PixtralProcessor of tiny_mistral_processor.py (model_max_length 256), and a transformer with a
guidance embedding (guidance_embeds true: FLUX.2 [dev] is guidance-distilled).
"""

from __future__ import annotations

import torch

from .tiny_mistral_processor import offline_mistral_processor
from .tiny_qwen_tokenizer import offline_qwen_tokenizer

SEED = 0
RESOLUTION = 32
QWEN_HIDDEN = 16
QWEN_LAYERS = 28  # > 27: Flux2KleinPipeline's default text_encoder_out_layers are (9, 18, 27)
TEXT_LAYERS = (9, 18, 27)
MISTRAL_LAYERS = 32  # > 30: Flux2Pipeline's default text_encoder_out_layers are (10, 20, 30)
LATENT_CHANNELS = 4
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _qwen3(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN,
                         num_hidden_layers=QWEN_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(config).eval()


def _mistral3(processor):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = processor.tokenizer
    text = dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN,
                num_hidden_layers=MISTRAL_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    vision = dict(model_type="pixtral", hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, image_size=32, patch_size=16)
    config = Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=2,
                            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"))
    torch.manual_seed(SEED)
    return Mistral3ForConditionalGeneration(config).eval()


def _vae():
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(SEED)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                             layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8,
                             sample_size=RESOLUTION, mid_block_add_attention=False)
    generator = torch.Generator().manual_seed(SEED)
    channels = vae.bn.num_features
    vae.bn.running_mean.copy_(0.3 * torch.randn(channels, generator=generator))
    vae.bn.running_var.copy_(0.25 + 3.75 * torch.rand(channels, generator=generator))
    return vae.eval()


def _transformer(guidance_embeds: bool = False):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(SEED)
    return Flux2Transformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2,
                                   joint_attention_dim=len(TEXT_LAYERS) * QWEN_HIDDEN, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance_embeds)


def build_tiny_flux2_pipeline():
    """The tiny Flux2KleinPipeline (is_distilled false: classifier-free guidance as klein's base
    models); identical weights on every call, global RNG restored."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    with torch.random.fork_rng(devices=[]):
        tokenizer = offline_qwen_tokenizer()
        return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=_vae(),
                                  text_encoder=_qwen3(tokenizer), tokenizer=tokenizer, transformer=_transformer(),
                                  is_distilled=False)


def build_tiny_flux2_dev_pipeline():
    """The tiny Flux2Pipeline (FLUX.2 [dev]-shaped); identical weights on every call, global RNG restored."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    with torch.random.fork_rng(devices=[]):
        processor = offline_mistral_processor()
        return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=_vae(),
                             text_encoder=_mistral3(processor), tokenizer=processor,
                             transformer=_transformer(guidance_embeds=True))
