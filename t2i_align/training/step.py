"""One micro-batch of preference training: latents, conditioning, noising, errors, objective.

The policy runs once on the chosen and rejected images concatenated ([2B]); the reference (when
the objective needs one) runs once on the same inputs without gradients. Methods differ only in
the objective and, later, in how x_t is made and which caption conditions which image.
"""

import torch

from t2i_align.families import get_family
from t2i_align.noising import NOISINGS
from t2i_align.noising.random import rand
from t2i_align.objectives import compute_objective
from t2i_align.errors import InputError


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Replace captions by the empty prompt where `drop` is True (classifier-free guidance
    training; Diffusion-DPO uses 0.2)."""
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def build_conditioning(captions_w: list[str], captions_l: list[str] | None, text_encoders,
                       tokenizers, family, original_sizes_w, original_sizes_l, crop_top_left,
                       resolution: int, device, time_ids: str = "fixed", guidance: float | None = None) -> dict:
    """The denoiser's conditioning for the chosen images, then the rejected ones (when captions_l
    is given), made by the family (a name or module) from the encoded captions.

    Shared captions are encoded once and repeated. Sizes, crop corner and time_ids feed the
    families whose denoiser takes micro-conditioning (add_time_ids); the others ignore them.
    guidance (model.guidance) feeds the families whose denoiser has a guidance embedding.
    """
    fam = get_family(family)
    if captions_l is None:
        text = fam.encode_prompts(captions_w, text_encoders, tokenizers)
    elif captions_l == captions_w:
        text = {k: torch.cat([v, v]) for k, v in fam.encode_prompts(captions_w, text_encoders, tokenizers).items()}
    else:
        text = fam.encode_prompts(captions_w + captions_l, text_encoders, tokenizers)
    return fam.conditioning(text, original_sizes_w=original_sizes_w, original_sizes_l=original_sizes_l,
                            crop_top_left=crop_top_left, with_rejected=captions_l is not None,
                            resolution=resolution, time_ids=time_ids, device=device, guidance=guidance)


def cached_conditioning(batch: dict, drop: torch.Tensor | None, uses_rejected: bool, per_image_captions: bool,
                        family, resolution: int, device, time_ids: str = "fixed",
                        guidance: float | None = None) -> dict:
    """The denoiser's conditioning from cached text embeddings (the family's TEXT_CACHE tensors),
    laid out as build_conditioning's: chosen rows, then rejected rows. Dropped captions take the
    cached embedding of the empty prompt."""
    fam = get_family(family)

    def side(suffix: str) -> dict:
        text = {}
        for name, key in fam.TEXT_CACHE.items():
            value = batch[f"{name}_{suffix}"]
            if drop is not None and bool(drop.any()):
                keep = ~drop.view(-1, *[1] * (value.ndim - 1)).to(value.device)
                value = torch.where(keep, value, batch[f"empty_{name}"].to(value))
            text[key] = value
        return text

    text = side("w")
    if uses_rejected:
        text_l = side("l") if per_image_captions else text
        text = {key: torch.cat([value, text_l[key]]) for key, value in text.items()}
    return fam.conditioning(text, original_sizes_w=batch["original_sizes_w"],
                            original_sizes_l=batch["original_sizes_l"], crop_top_left=batch["crop_top_left"],
                            with_rejected=uses_rejected, resolution=resolution, time_ids=time_ids, device=device,
                            guidance=guidance)


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over (C, H, W) of the squared error, in fp32: E in the papers' notation."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def preference_step(batch: dict, *, unet, reference, vae, text_encoders, tokenizers, family,
                    noise_scheduler, prediction_type: str, objective, objective_hparams: dict,
                    generator: torch.Generator, caption_dropout: float, resolution: int,
                    device, autocast, per_image_captions: bool = False, noising: str = "forward",
                    inversion_steps: int = 10, inversion_eta: float = 0.0,
                    inversion_model: str = "reference",
                    inversion_evaluate_at: str = "destination",
                    time_ids: str = "fixed", flow: dict | None = None,
                    guidance: float | None = None) -> tuple[torch.Tensor, dict]:
    """Loss and metrics for one micro-batch of pairs (batch from data.collate_pairs).

    per_image_captions: condition x_w on captions_w and x_l on captions_l (DCPO) instead of
    the pair's shared prompt. family: a family name or module (t2i_align/families/): it makes the
    latents, the conditioning, (x_t, target, t) and the denoiser's predictions. time_ids: the
    micro-conditioning mode (model.time_ids, "fixed" or "original") for families that take one.
    noising: "forward" (shared t and noise per pair) or "inversion" (InPO: the family's inversion,
    DDIM for the UNet families, in `inversion_steps` steps with added noise `inversion_eta`, by the frozen reference (default) or
    by the policy under no grad as released, with the model evaluated at each step's
    `inversion_evaluate_at` level; noising/ddim_inversion.py says why the reference is the
    default), with the same conditioning as the loss pass. flow: the rectified-flow families'
    sigma sampling and loss weighting (model.flow), passed to the family unread. guidance: the
    guidance-embedding value of guidance-distilled transformers (model.guidance), passed to the
    family's conditioning unread.
    """
    fam = get_family(family)
    uses_rejected = objective.uses_rejected
    cached = "latent_mean_w" in batch  # a batch of the latent cache (data/latent_cache.py)
    if cached:
        mean, std = batch["latent_mean_w"], batch["latent_std_w"]
        if uses_rejected:
            mean, std = torch.cat([mean, batch["latent_mean_l"]]), torch.cat([std, batch["latent_std_l"]])
        latents = fam.posterior_latents(mean.to(device), std.to(device), generator, batch["scaling_factor"],
                                        batch["shift_factor"])
    elif uses_rejected:  # one VAE call for both images of every pair
        latents = fam.encode_latents(vae, torch.cat([batch["pixels_w"], batch["pixels_l"]]), generator)
    else:
        latents = fam.encode_latents(vae, batch["pixels_w"], generator)
    latents_w, latents_l = latents.chunk(2) if uses_rejected else (latents, None)

    num_pairs = latents_w.shape[0]
    drop = rand(num_pairs, generator) < caption_dropout if caption_dropout > 0 else None
    if cached:
        cond = cached_conditioning(batch, drop, uses_rejected, per_image_captions, fam, resolution, device,
                                   time_ids, guidance)
    else:
        if per_image_captions:  # DCPO: each image conditioned on its own caption
            captions_w, captions_l = list(batch["captions_w"]), list(batch["captions_l"])
        else:
            captions_w = captions_l = list(batch["captions"])
        if drop is not None:
            captions_w, captions_l = drop_captions(captions_w, drop), drop_captions(captions_l, drop)
        cond = build_conditioning(captions_w, captions_l if uses_rejected else None, text_encoders,
                                  tokenizers, fam, batch["original_sizes_w"], batch["original_sizes_l"],
                                  batch["crop_top_left"], resolution, device, time_ids, guidance)

    if noising == "forward":
        noisy, target, timesteps = fam.forward_pairs(noise_scheduler, latents_w, latents_l, generator,
                                                     prediction_type, flow=flow)
    elif noising == "inversion":  # InPO: x_t by inverting x_0, target = what the inverted latent implies
        inverter = reference if inversion_model == "reference" else unet

        @torch.no_grad()
        def predict(x, t):
            with autocast():
                return fam.predict(inverter, x, t, cond)

        noisy, target, timesteps = fam.inversion_pairs(
            noise_scheduler, latents_w, latents_l, predict, generator, prediction_type,
            num_steps=inversion_steps, eta=inversion_eta, evaluate_at=inversion_evaluate_at, flow=flow)
    else:
        raise InputError(f"unknown method.noising {noising!r}; choose one of {NOISINGS}")
    with autocast():
        pred = fam.predict(unet, noisy, timesteps, cond)
    model_err = per_sample_error(pred, target)
    ref_err = None
    if objective.needs_reference:
        with autocast():
            ref_pred = fam.predict(reference, noisy, timesteps, cond)
        ref_err = per_sample_error(ref_pred, target)
    weights = fam.error_weights(timesteps, flow=flow)  # None: plain MSE (every UNet family, SD3's default)
    if weights is not None:
        model_err = model_err * weights
        ref_err = ref_err * weights if ref_err is not None else None

    split = lambda e: (e[:num_pairs], e[num_pairs:]) if uses_rejected else (e, None)  # noqa: E731
    model_err_w, model_err_l = split(model_err)
    ref_err_w, ref_err_l = split(ref_err) if ref_err is not None else (None, None)
    loss, metrics = compute_objective(objective, objective_hparams, model_err_w, model_err_l,
                                      ref_err_w, ref_err_l)
    metrics["timestep_mean"] = timesteps.float().mean()
    return loss, metrics
