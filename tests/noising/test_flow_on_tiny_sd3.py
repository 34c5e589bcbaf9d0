"""The flow-matching pieces on the tiny SD3.5-shaped transformer: one Diffusion-DPO step on
velocity errors with LoRA (the diffusers SD3 targets, matching SD3.5's attn2 too) and the
adapters-off reference gives ln 2 at step 1 and gradients on LoRA weights only; InPO-style Euler
inversion by the frozen transformer lands on the interpolation path; the LoRA weights load into
StableDiffusion3Pipeline. The SD3 family (families/) will wire exactly these calls."""

import math

import torch

from t2i_align.models.lora import add_lora
from t2i_align.models.prompt_encoding_sd3 import encode_sd3_prompts
from t2i_align.models.tiny import resolve_model_path
from t2i_align.noising.flow import (euler_invert, flow_noise_pairs, implied_targets, normalise_latents, sample_u,
                                    sigmas_from_table)
from t2i_align.noising.random import PerSampleGenerator
from t2i_align.objectives.dpo import dpo_loss

SD3_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def _parts():
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(resolve_model_path("tiny:sd3"))


def _velocity(transformer, x, sigmas, cond):
    return transformer(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                       pooled_projections=cond["pooled_projections"], timestep=sigmas * 1000,
                       return_dict=False)[0]


def test_dpo_step_on_velocity_errors_with_lora_and_adapters_off_reference(t2i_cache, tmp_path):
    pipe = _parts()
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    add_lora(transformer, rank=4, target_modules=SD3_LORA_TARGETS)
    adapted = {n.split(".lora_A")[0] for n, _ in transformer.named_parameters() if ".lora_A" in n}
    assert "transformer_blocks.0.attn2.to_q" in adapted and "transformer_blocks.0.attn.add_k_proj" in adapted
    generator = PerSampleGenerator([1, 2])
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean
        latents = normalise_latents(latents, pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor)
        cond = encode_sd3_prompts(["a red circle", "a blue square"] * 2,
                                  [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
                                  [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3], max_sequence_length=16)
    u = sample_u(2, generator, "cpu", "logit_normal")
    sigmas, _ = sigmas_from_table(u, pipe.scheduler.sigmas, pipe.scheduler.timesteps)
    noisy, target, rows = flow_noise_pairs(latents[:2], latents[2:], sigmas, generator)
    errors = ((_velocity(transformer, noisy, rows, cond).float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    transformer.disable_adapters()
    with torch.no_grad():
        ref = ((_velocity(transformer, noisy, rows, cond).float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    transformer.enable_adapters()
    loss, _ = dpo_loss(errors[:2], errors[2:], ref[:2], ref[2:], beta=100.0)
    assert torch.equal(errors.detach(), ref)  # B = 0 at init: policy == reference exactly
    assert loss.item() == torch.tensor(math.log(2)).item()  # ln 2 in float32
    loss.backward()
    with_grad = {n for n, p in transformer.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)

    # the LoRA weights load into the diffusers pipeline and change its output once non-zero
    from peft.utils import get_peft_model_state_dict
    from diffusers import StableDiffusion3Pipeline

    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                               safe_serialization=True)
    fresh = _parts()
    run = lambda p: p(["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np",  # noqa: E731
                      generator=torch.Generator().manual_seed(0), max_sequence_length=16).images
    before = run(fresh)
    fresh.load_lora_weights(tmp_path)
    assert not (run(fresh) == before).all()


def test_euler_inversion_by_the_frozen_transformer_lands_on_the_path(t2i_cache):
    pipe = _parts()
    transformer = pipe.transformer.eval()
    latents = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = encode_sd3_prompts(["a red circle", "a blue square"],
                                  [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
                                  [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3], max_sequence_length=16)
        sigmas = torch.tensor([0.3, 0.9])
        inverted = euler_invert(lambda x, s: _velocity(transformer, x, s, cond), latents, sigmas, steps=4)
    eps, v = implied_targets(latents, inverted, sigmas)
    s = sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close((1 - s) * latents + s * eps, inverted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, eps - latents, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(inverted, latents)
