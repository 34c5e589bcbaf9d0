"""One micro-batch of preference training: latents, conditioning, noising, errors, objective.

The policy runs once on the chosen and rejected images concatenated ([2B]); the reference (when
the objective needs one) runs once on the same inputs without gradients. Methods differ only in
the objective and, later, in how x_t is made and which caption conditions which image.
"""

import torch

from t2i_align.models.prompt_encoding import encode_prompts, sdxl_time_ids
from t2i_align.noising import NOISINGS, forward_noise_pairs, inversion_noise_pairs
from t2i_align.noising.random import rand, randn
from t2i_align.objectives import compute_objective
from t2i_align.errors import InputError


def posterior_latents(mean: torch.Tensor, std: torch.Tensor, generator, scaling_factor: float,
                      shift_factor: float | None) -> torch.Tensor:
    """A VAE posterior sample mean + std * z, shifted and scaled as the UNet expects, in float32.

    The image path (encode_latents) and the latent cache (which stores mean and std) both go
    through this function, so from the same (mean, std, generator) they give the same latents."""
    latents = mean + std * randn(mean.shape, generator, mean.device, dtype=mean.dtype)
    if shift_factor is not None:
        latents = latents - shift_factor
    return latents.float() * scaling_factor


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of `pixels`, in the VAE's dtype (fp32 for the SDXL VAE,
    which overflows in fp16)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean, dist.std


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator) -> torch.Tensor:
    """VAE posterior sample, scaled (and shifted, for VAEs that define shift_factor) as the UNet
    expects. `generator`: a torch.Generator or a PerSampleGenerator."""
    mean, std = encode_posterior(vae, pixels)
    return posterior_latents(mean, std, generator, vae.config.scaling_factor,
                             getattr(vae.config, "shift_factor", None))


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Replace captions by the empty prompt where `drop` is True (classifier-free guidance
    training; Diffusion-DPO uses 0.2)."""
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


TIME_IDS = ("fixed", "original")


def pair_time_ids(mode: str, original_sizes_w, original_sizes_l, crop_top_left, resolution: int,
                  with_rejected: bool) -> torch.Tensor:
    """SDXL add_time_ids for the chosen rows, then the rejected rows (with_rejected).

    "fixed": (res, res, 0, 0, res, res) for every image, as the Diffusion-DPO, DCPO and InPO
    releases train and as SDXL pipelines pass at inference (model.time_ids in conf/model/sdxl.yaml).
    "original": each image's own original size and the pair's crop corner (MaPO's release uses
    jpg_0's for both; SDXL's pretraining used the real ones). Most Pick-a-Pic images are smaller
    than 1024 px, so "original" teaches the preference under a low-resolution-source condition
    that inference never asks for."""
    if mode not in TIME_IDS:
        raise InputError(f"unknown SDXL time_ids mode {mode!r}; choose one of {TIME_IDS}")
    target = (resolution, resolution)
    count = len(original_sizes_w)
    if mode == "fixed":
        sizes = torch.full((count, 2), resolution, dtype=torch.long)
        ids = sdxl_time_ids(sizes, torch.zeros(count, 2, dtype=torch.long), target)
        return torch.cat([ids, ids]) if with_rejected else ids
    ids = sdxl_time_ids(original_sizes_w, crop_top_left, target)
    if with_rejected:
        ids = torch.cat([ids, sdxl_time_ids(original_sizes_l, crop_top_left, target)])
    return ids


def build_conditioning(captions_w: list[str], captions_l: list[str] | None, text_encoders,
                       tokenizers, family: str, original_sizes_w, original_sizes_l, crop_top_left,
                       resolution: int, device, time_ids: str = "fixed") -> dict:
    """UNet conditioning for the chosen images, then the rejected ones (when captions_l is given).

    Shared captions are encoded once and repeated. SDXL adds the pooled embedding and
    add_time_ids (``pair_time_ids``: fixed, or each image's original size and the pair's crop).
    """
    if captions_l is None:
        cond = encode_prompts(captions_w, text_encoders, tokenizers, family)
    elif captions_l == captions_w:
        cond = {k: torch.cat([v, v]) for k, v in encode_prompts(captions_w, text_encoders, tokenizers, family).items()}
    else:
        cond = encode_prompts(captions_w + captions_l, text_encoders, tokenizers, family)
    out = {"encoder_hidden_states": cond["encoder_hidden_states"].to(device)}
    if family == "sdxl":
        ids = pair_time_ids(time_ids, original_sizes_w, original_sizes_l, crop_top_left, resolution,
                            captions_l is not None)
        out["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(device), "time_ids": ids.to(device)}
    return out


def cached_conditioning(batch: dict, drop: torch.Tensor | None, uses_rejected: bool, per_image_captions: bool,
                        family: str, resolution: int, device, time_ids: str = "fixed") -> dict:
    """UNet conditioning from cached text embeddings, laid out as build_conditioning's: chosen rows,
    then rejected rows. Dropped captions take the cached embedding of the empty prompt."""
    def side(suffix: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, pooled = batch[f"hidden_{suffix}"], batch.get(f"pooled_{suffix}")
        if drop is not None and bool(drop.any()):
            keep = ~drop.view(-1, 1, 1).to(hidden.device)
            hidden = torch.where(keep, hidden, batch["empty_hidden"].to(hidden))
            if pooled is not None:
                pooled = torch.where(keep[:, :, 0], pooled, batch["empty_pooled"].to(pooled))
        return hidden, pooled

    hidden, pooled = side("w")
    if uses_rejected:
        hidden_l, pooled_l = side("l") if per_image_captions else (hidden, pooled)
        hidden = torch.cat([hidden, hidden_l])
        pooled = torch.cat([pooled, pooled_l]) if pooled is not None else None
    out = {"encoder_hidden_states": hidden.to(device)}
    if family == "sdxl":
        ids = pair_time_ids(time_ids, batch["original_sizes_w"], batch["original_sizes_l"], batch["crop_top_left"],
                            resolution, uses_rejected)
        out["added_cond_kwargs"] = {"text_embeds": pooled.to(device), "time_ids": ids.to(device)}
    return out


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over (C, H, W) of the squared error, in fp32: E in the papers' notation."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def preference_step(batch: dict, *, unet, reference, vae, text_encoders, tokenizers, family: str,
                    noise_scheduler, prediction_type: str, objective, objective_hparams: dict,
                    generator: torch.Generator, caption_dropout: float, resolution: int,
                    device, autocast, per_image_captions: bool = False, noising: str = "forward",
                    inversion_steps: int = 10, inversion_eta: float = 0.0,
                    inversion_model: str = "reference",
                    inversion_evaluate_at: str = "destination",
                    time_ids: str = "fixed") -> tuple[torch.Tensor, dict]:
    """Loss and metrics for one micro-batch of pairs (batch from data.collate_pairs).

    per_image_captions: condition x_w on captions_w and x_l on captions_l (DCPO) instead of
    the pair's shared prompt. time_ids: SDXL's add_time_ids, "fixed" or "original" (pair_time_ids).
    noising: "forward" (shared t and noise per pair) or "inversion" (InPO: DDIM inversion in
    `inversion_steps` steps with added noise `inversion_eta`, by the frozen reference (default) or
    by the policy under no grad as released, with the model evaluated at each step's
    `inversion_evaluate_at` level; noising/ddim_inversion.py says why the reference is the
    default), with the same conditioning as the loss pass.
    """
    uses_rejected = objective.uses_rejected
    cached = "latent_mean_w" in batch  # a batch of the latent cache (data/latent_cache.py)
    if cached:
        mean, std = batch["latent_mean_w"], batch["latent_std_w"]
        if uses_rejected:
            mean, std = torch.cat([mean, batch["latent_mean_l"]]), torch.cat([std, batch["latent_std_l"]])
        latents = posterior_latents(mean.to(device), std.to(device), generator, batch["scaling_factor"],
                                    batch["shift_factor"])
    elif uses_rejected:  # one VAE call for both images of every pair
        latents = encode_latents(vae, torch.cat([batch["pixels_w"], batch["pixels_l"]]), generator)
    else:
        latents = encode_latents(vae, batch["pixels_w"], generator)
    latents_w, latents_l = latents.chunk(2) if uses_rejected else (latents, None)

    num_pairs = latents_w.shape[0]
    drop = rand(num_pairs, generator) < caption_dropout if caption_dropout > 0 else None
    if cached:
        cond = cached_conditioning(batch, drop, uses_rejected, per_image_captions, family, resolution, device,
                                   time_ids)
    else:
        if per_image_captions:  # DCPO: each image conditioned on its own caption
            captions_w, captions_l = list(batch["captions_w"]), list(batch["captions_l"])
        else:
            captions_w = captions_l = list(batch["captions"])
        if drop is not None:
            captions_w, captions_l = drop_captions(captions_w, drop), drop_captions(captions_l, drop)
        cond = build_conditioning(captions_w, captions_l if uses_rejected else None, text_encoders,
                                  tokenizers, family, batch["original_sizes_w"], batch["original_sizes_l"],
                                  batch["crop_top_left"], resolution, device, time_ids)

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
            num_steps=inversion_steps, eta=inversion_eta, evaluate_at=inversion_evaluate_at)
    else:
        raise InputError(f"unknown method.noising {noising!r}; choose one of {NOISINGS}")
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

    split = lambda e: (e[:num_pairs], e[num_pairs:]) if uses_rejected else (e, None)  # noqa: E731
    model_err_w, model_err_l = split(model_err)
    ref_err_w, ref_err_l = split(ref_err) if ref_err is not None else (None, None)
    loss, metrics = compute_objective(objective, objective_hparams, model_err_w, model_err_l,
                                      ref_err_w, ref_err_l)
    metrics["timestep_mean"] = timesteps.float().mean()
    return loss, metrics
