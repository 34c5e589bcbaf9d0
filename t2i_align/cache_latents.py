"""Build the latent + text-embedding cache of a training configuration, then exit.

    python -m t2i_align.cache_latents +exp=mapo_pickstyle model.path=/weights/sdxl
    accelerate launch -m t2i_align.cache_latents +exp=dpo_pickapic      # shards split over GPUs

Takes the same configuration as t2i_align.train (the cache key depends on the model, VAE,
resolution, flip policy, caption mode and data), so the training run with data.cache.enabled=true
finds the cache this command built. Prints the folder and the throughput. data.cache.dir chooses
the folder; by default it is $T2I_ALIGN_CACHE/latents/<key hash>.
"""

import json
import logging
import time

import hydra
import torch
from omegaconf import DictConfig
from t2i_align.cli import one_line_errors, quiet_libraries

log = logging.getLogger("t2i_align.cache")


def build_cache(cfg: DictConfig) -> str:
    """Build (or finish) the cache for `cfg`; return its folder."""
    from accelerate import PartialState

    from t2i_align.data.latent_cache import build_latent_cache, cache_complete
    from t2i_align.models.loading import load_parts
    from t2i_align.training.recipe import DTYPES, latent_cache_location, load_table, resolve_data_path, text_options

    state = PartialState(cpu=not torch.cuda.is_available())
    m_cfg, d_cfg = cfg.model, cfg.data
    data_path = resolve_data_path(d_cfg, m_cfg, min_pairs=cfg.trainer.batch_size)
    resolution = int(d_cfg.resolution or m_cfg.resolution)
    per_image = cfg.method.captions == "per_image"
    vae_dtype = torch.float32 if m_cfg.vae_fp32 else DTYPES[cfg.trainer.mixed_precision]
    key, folder = latent_cache_location(m_cfg, d_cfg, data_path, resolution, per_image, vae_dtype, cfg.trainer.seed)
    if cache_complete(folder, key):
        log.info("latent cache already complete: %s", folder)
        return str(folder)
    parts = load_parts(m_cfg.path, family=m_cfg.family, vae_path=m_cfg.vae_path, unet_path=m_cfg.unet_path,
                       revision=m_cfg.revision, variant=m_cfg.variant, **text_options(m_cfg))
    parts.unet = None  # not needed to encode
    parts.vae.to(state.device, dtype=vae_dtype)
    te_dtype = DTYPES[cfg.trainer.mixed_precision]
    for encoder in parts.text_encoders:
        encoder.to(state.device, dtype=te_dtype)
    table, _ = load_table(d_cfg, data_path, cfg.trainer.seed, per_image)
    started = time.perf_counter()
    build_latent_cache(table, folder, key, vae=parts.vae, text_encoders=parts.text_encoders,
                       tokenizers=parts.tokenizers, family=parts.family, resolution=resolution,
                       flip_variants=d_cfg.cache.flip_variants, per_image_captions=per_image,
                       storage_dtype=d_cfg.cache.dtype, shard_size=d_cfg.cache.shard_size,
                       batch_size=d_cfg.cache.batch_size, store_std=d_cfg.cache.get("store_std", True),
                       max_image_pixels=d_cfg.get("max_image_pixels"), process_index=state.process_index,
                       num_processes=state.num_processes, wait=state.wait_for_everyone)
    seconds = time.perf_counter() - started
    if state.is_main_process:
        info = json.loads((folder / "cache_info.json").read_text())
        size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
        print(f"latent cache: {folder}\n{info['valid_rows']} pairs ({info['skipped_rows']} unreadable skipped), "
              f"{info['captions']} captions, {size / 2**20:.1f} MB, {len(table) / seconds:.1f} pairs/s")
    return str(folder)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    build_cache(cfg)


if __name__ == "__main__":
    main()
