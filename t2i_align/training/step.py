"""One micro-batch of preference training: latents, conditioning, noising, errors, objective.

The policy runs once on the chosen and rejected images concatenated ([2B]); the reference (when
the objective needs one) runs once on the same inputs without gradients. Methods differ only in
the objective and, later, in how x_t is made and which caption conditions which image.
"""

import torch

from t2i_align.models.prompt_encoding import encode_prompts, sdxl_time_ids
from t2i_align.noising import NOISINGS, forward_noise_pairs, inversion_noise_pairs
from t2i_align.objectives import compute_objective


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """VAE posterior sample, scaled (and shifted, for VAEs that define shift_factor) as the UNet
    expects. Runs in the VAE's dtype (fp32 for the SDXL VAE, which overflows in fp16)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents.float() * vae.config.scaling_factor


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Replace captions by the empty prompt where `drop` is True (classifier-free guidance
    training; Diffusion-DPO uses 0.2)."""
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def build_conditioning(captions_w: list[str], captions_l: list[str] | None, text_encoders,
                       tokenizers, family: str, original_sizes_w, original_sizes_l, crop_top_left,
                       resolution: int, device) -> dict:
    """UNet conditioning for the chosen images, then the rejected ones (when captions_l is given).

    Shared captions are encoded once and repeated. SDXL adds the pooled embedding and
    add_time_ids built from each image's own original size and the pair's crop corner.
    """
    if captions_l is None:
        cond = encode_prompts(captions_w, text_encoders, tokenizers, family)
    elif captions_l == captions_w:
        cond = {k: torch.cat([v, v]) for k, v in encode_prompts(captions_w, text_encoders, tokenizers, family).items()}
    else:
        cond = encode_prompts(captions_w + captions_l, text_encoders, tokenizers, family)
    out = {"encoder_hidden_states": cond["encoder_hidden_states"].to(device)}
    if family == "sdxl":
        target = (resolution, resolution)
        time_ids = sdxl_time_ids(original_sizes_w, crop_top_left, target)
        if captions_l is not None:
            time_ids = torch.cat([time_ids, sdxl_time_ids(original_sizes_l, crop_top_left, target)])
        out["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(device),
                                    "time_ids": time_ids.to(device)}
    return out


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over (C, H, W) of the squared error, in fp32: E in the papers' notation."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def preference_step(batch: dict, *, unet, reference, vae, text_encoders, tokenizers, family: str,
                    noise_scheduler, prediction_type: str, objective, objective_hparams: dict,
                    generator: torch.Generator, caption_dropout: float, resolution: int,
                    device, autocast, per_image_captions: bool = False, noising: str = "forward",
                    inversion_steps: int = 10, inversion_eta: float = 0.0,
                    inversion_model: str = "policy") -> tuple[torch.Tensor, dict]:
    """Loss and metrics for one micro-batch of pairs (batch from data.collate_pairs).

    per_image_captions: condition x_w on captions_w and x_l on captions_l (DCPO) instead of
    the pair's shared prompt.
    noising: "forward" (shared t and noise per pair) or "inversion" (InPO: DDIM inversion in
    `inversion_steps` steps with added noise `inversion_eta`, by the policy under no grad as
    released, or by the reference), with the same conditioning as the loss pass.
    """
    uses_rejected = objective.uses_rejected
    if uses_rejected:  # one VAE call for both images of every pair
        latents_w, latents_l = encode_latents(
            vae, torch.cat([batch["pixels_w"], batch["pixels_l"]]), generator).chunk(2)
    else:
        latents_w, latents_l = encode_latents(vae, batch["pixels_w"], generator), None

    if per_image_captions:  # DCPO: each image conditioned on its own caption
        captions_w, captions_l = list(batch["captions_w"]), list(batch["captions_l"])
    else:
        captions_w = captions_l = list(batch["captions"])
    if caption_dropout > 0:
        drop = torch.rand(len(captions_w), generator=generator, device=generator.device) < caption_dropout
        captions_w, captions_l = drop_captions(captions_w, drop), drop_captions(captions_l, drop)
    cond = build_conditioning(captions_w, captions_l if uses_rejected else None, text_encoders,
                              tokenizers, family, batch["original_sizes_w"], batch["original_sizes_l"],
                              batch["crop_top_left"], resolution, device)

    if noising == "forward":
        noisy, target, timesteps = forward_noise_pairs(noise_scheduler, latents_w, latents_l,
                                                       generator, prediction_type)
    elif noising == "inversion":  # InPO: x_t by DDIM inversion of x_0, target = implied noise
        inverter = reference if inversion_model == "reference" else unet

        @torch.no_grad()
        def predict(x, t):
            with autocast():
                out = inverter(x, t, cond["encoder_hidden_states"],
                               added_cond_kwargs=cond.get("added_cond_kwargs"))
            return out if torch.is_tensor(out) else out.sample

        noisy, target, timesteps = inversion_noise_pairs(
            noise_scheduler, latents_w, latents_l, predict, generator, prediction_type,
            num_steps=inversion_steps, eta=inversion_eta)
    else:
        raise ValueError(f"unknown method.noising {noising!r}; choose one of {NOISINGS}")
    with autocast():
        pred = unet(noisy, timesteps, cond["encoder_hidden_states"],
                    added_cond_kwargs=cond.get("added_cond_kwargs")).sample
    model_err = per_sample_error(pred, target)
    ref_err = None
    if objective.needs_reference:
        with autocast():
            ref_pred = reference(noisy, timesteps, cond["encoder_hidden_states"],
                                 added_cond_kwargs=cond.get("added_cond_kwargs"))
        ref_err = per_sample_error(ref_pred, target)

    num_pairs = latents_w.shape[0]
    split = lambda e: (e[:num_pairs], e[num_pairs:]) if uses_rejected else (e, None)  # noqa: E731
    model_err_w, model_err_l = split(model_err)
    ref_err_w, ref_err_l = split(ref_err) if ref_err is not None else (None, None)
    loss, metrics = compute_objective(objective, objective_hparams, model_err_w, model_err_l,
                                      ref_err_w, ref_err_l)
    metrics["timestep_mean"] = timesteps.float().mean()
    return loss, metrics
