"""The training recipe: one explicit loop on accelerate (torchtune / nanoGPT style).

run_training(cfg, run_dir) reads the composed Hydra config and wires flat-argument pieces:
models.load_parts -> LoRA / attention / checkpointing -> reference strategy -> data ->
optimizer + schedule -> loop (gradient accumulation, clipping, logging, checkpoints) -> final/.
"""

import contextlib
import functools
import logging
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from t2i_align.data.dataset import PreferencePairs, build_dataloader, collate_pairs
from t2i_align.data.latent_cache import (CachedPairs, build_latent_cache, cache_complete, cache_key, collate_cached,
                                        data_signature, default_cache_dir)
from t2i_align.data.tables import load_pairs
from t2i_align.families import get_family
from t2i_align.noising.ddim_inversion import EVALUATE_AT
from t2i_align.noising.random import PerSampleGenerator
from t2i_align.models.attention import set_attention_backend
from t2i_align.models.loading import load_parts
from t2i_align.models.lora import add_lora, cast_frozen_base
from t2i_align.models.quantization import check_quantize_base, compute_dtype, trainable_to_fp32
from t2i_align.models.reference import AdaptersOffReference, make_reference
from t2i_align.objectives import get_objective
from t2i_align.training.checkpoint import (CheckpointContents, find_resume_checkpoint, load_checkpoint,
                                           register_unet_state_hooks, save_checkpoint)
from t2i_align.training.final import save_final
from t2i_align.training.metrics_log import (MetricsWriter, flat_hparams, mean_metrics, mean_over_processes,
                                            to_float)
from t2i_align.training.optim import build_lr_scheduler, build_optimizer, scaled_learning_rate
from t2i_align.training.step import preference_step
from t2i_align.errors import InputError, UserError

log = logging.getLogger("t2i_align.train")

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or inf; training stops and the last checkpoint stays as it was."""


def resolve_reference_strategy(strategy: str, use_lora: bool, needs_reference: bool) -> str:
    """auto -> adapters_off with LoRA (no second copy of the weights), copy for full FT."""
    if not needs_reference:
        return "none"
    if strategy == "auto":
        return "adapters_off" if use_lora else "copy"
    return strategy


def build_accelerator(mixed_precision: str, logger: str, run_dir: Path) -> Accelerator:
    """Accelerator with the chosen tracker (wandb / tensorboard) or none."""
    log_with = None if logger in (None, "none") else logger
    # AcceleratorState is a process-wide singleton: a second run in the same process (Hydra
    # multirun sweeps, tests) with another mixed precision would be refused. Reset it, keeping
    # the distributed PartialState.
    AcceleratorState._reset_state(reset_partial_state=False)
    # Without CUDA, cpu=True lets torchrun --nproc_per_node N form a gloo group (else N
    # independent single-process runs); with CUDA accelerate picks the GPUs as usual.
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, cpu=not torch.cuda.is_available(),
                       project_dir=str(run_dir), step_scheduler_with_optimizer=False)


def place_text_encoders(encoders: list, device, dtype, on_cpu: bool = False) -> torch.device:
    """Move the frozen text encoders to `device` in `dtype`, or (on_cpu: trainer.text_encoders_on_cpu)
    keep them in CPU RAM in `dtype`: they then encode each batch's captions on the CPU and the
    family's conditioning moves the embeddings to the training device (device memory saved: T5-XXL
    is 4.8B parameters, 9.5 GB in bf16; paid for with CPU time every step unless the latent cache,
    which needs no encoder at all once built, is used). Returns where the encoders are."""
    where = torch.device("cpu") if on_cpu else torch.device(device)
    for encoder in encoders:
        encoder.to(where, dtype=dtype)
    return where


def micro_batches(dataloader, dataset, position: dict, accelerator):
    """Yield batches forever, epoch after epoch, updating `position` (epoch, batch index within
    the epoch) so a checkpoint records exactly where the data stream stands. On resume the
    first `position["batch"]` batches of the epoch are skipped without loading their images."""
    while True:
        loader = dataloader
        if position["batch"] > 0:
            loader = accelerator.skip_first_batches(dataloader, position["batch"])
        # accelerate's loaders re-apply their own epoch counter at every __iter__, so the epoch
        # is set on the loader itself (which forwards it to our EpochSampler), not the sampler.
        loader.set_epoch(position["epoch"])
        dataset.set_epoch(position["epoch"])
        for batch in loader:
            position["batch"] += 1
            yield batch
        position["epoch"] += 1
        position["batch"] = 0


def resolve_data_path(d_cfg, m_cfg, min_pairs: int = 1) -> str | None:
    """data.path, or (data.build=<preset> with no data.path) the preset built with this model on
    first use (a build keeping fewer than `min_pairs` pairs fails, saying why). A model with
    random weights (model.random_weights: the tiny test models) cannot build a preference set
    whose pairs must pass a style filter: that stops here, before anything is generated."""
    if d_cfg.path is None and d_cfg.get("build"):
        if m_cfg.get("random_weights"):
            raise InputError(
                f"model={m_cfg.name} has random weights, so it cannot build the data set data.build={d_cfg.build} "
                "(its images never pass the style filter: 0 pairs would be kept). Use data=generated (the offline "
                "drawn pairs, what the tiny models are for), data.path=<a built or downloaded set>, or model=toy_sdxl "
                "(the pretrained toy model the default run uses)")
        from t2i_align.data.builders.ensure import ensure_built

        return str(ensure_built(d_cfg.build, m_cfg, list(d_cfg.get("build_overrides") or []), min_pairs=min_pairs))
    return d_cfg.path


def load_table(d_cfg, data_path, seed: int, per_image_captions: bool = False):
    """(canonical, validated pair table, its load summary) of the data config (tables.load_pairs
    with its keys)."""
    return load_pairs(d_cfg.source, data_path, split=d_cfg.split, caption_column=d_cfg.caption_column,
                      image_columns=tuple(d_cfg.image_columns), label_column=d_cfg.label_column,
                      drop_ties=d_cfg.drop_ties, max_pairs=d_cfg.max_pairs,
                      num_generated=d_cfg.num_generated, seed=seed,
                      image_caption_columns=d_cfg.image_caption_columns,
                      image_caption_order=d_cfg.image_caption_order,
                      require_image_captions=per_image_captions)


def note_skipped(batch: dict, skipped: set, new: list) -> None:
    """Warn once about each row this batch skipped (unreadable images) that `skipped`, the run's
    set of unique skipped dataset indices, does not hold yet, and add it to `new`."""
    for index, why in batch.get("skipped", []):
        if index not in skipped and index not in new:
            log.warning("skipping pair: %s", why)
            new.append(index)


def merge_skipped(skipped: set, new: list, accelerator) -> None:
    """Add every process's newly skipped rows to `skipped` (one small gather per optimizer step
    when there are several processes), so the set and its count are the same on all of them."""
    if accelerator.num_processes > 1:
        new = [index for part in gather_object([list(new)]) for index in part]
    skipped.update(new)


def text_options(m_cfg) -> dict:
    """The T5 families' text settings set in the model config (model.max_sequence_length,
    model.use_t5); {} for configs without them (the UNet families)."""
    return {k: m_cfg[k] for k in ("max_sequence_length", "use_t5") if m_cfg.get(k) is not None}


def flow_options(m_cfg) -> dict:
    """model.flow (rectified-flow sigma sampling and loss weighting) as a plain dict; {} without it."""
    flow = m_cfg.get("flow")
    return dict(OmegaConf.to_container(flow, resolve=True)) if flow is not None else {}


def latent_cache_location(m_cfg, d_cfg, data_path, resolution: int, per_image_captions: bool, vae_dtype,
                          seed: int) -> tuple[dict, Path]:
    """(key, folder) of the latent cache for this model and data (data.cache.dir or automatic)."""
    data = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in d_cfg.items() if k in ("source", "split", "caption_column", "image_columns", "label_column",
                                              "drop_ties", "max_pairs", "num_generated", "image_caption_columns",
                                              "image_caption_order")}
    data.update(path=data_signature(data_path), seed=seed)
    key = cache_key(model_path=m_cfg.path, vae_path=m_cfg.vae_path, revision=m_cfg.revision, variant=m_cfg.variant,
                    family=m_cfg.family, resolution=resolution, flip_variants=d_cfg.cache.flip_variants,
                    per_image_captions=per_image_captions, storage_dtype=d_cfg.cache.dtype,
                    vae_dtype=str(vae_dtype).removeprefix("torch."), data=data, table_fingerprint=None,
                    store_std=d_cfg.cache.get("store_std", True), time_ids=m_cfg.get("time_ids", "fixed"),
                    text_options=text_options(m_cfg))
    if d_cfg.random_crop:
        raise InputError("data.cache.enabled=true stores centre crops; set data.random_crop=false "
                         "(random crops need the images: data.cache.enabled=false)")
    folder = Path(d_cfg.cache.dir).expanduser() if d_cfg.cache.dir else default_cache_dir(key)
    return key, folder


def run_training(cfg: DictConfig, run_dir) -> Path:
    """Train as configured; return the path of <run dir>/final."""
    # The HF tokenizers' own thread pool competes with torch's threads for the same cores
    # (measured: 35% slower steps on 2 cores); prompt batches are small, so keep it off.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_dir = Path(run_dir)
    t_cfg, m_cfg, d_cfg, meth = cfg.trainer, cfg.model, cfg.data, cfg.method
    objective = get_objective(meth.objective)
    use_lora = bool(t_cfg.lora.enabled)
    ref_strategy = resolve_reference_strategy(t_cfg.reference, use_lora, objective.needs_reference)
    quantize_base = t_cfg.get("quantize_base")
    check_quantize_base(quantize_base, use_lora, ref_strategy)  # before any data or model is loaded

    accelerator = build_accelerator(t_cfg.mixed_precision, cfg.logger.name, run_dir)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and t_cfg.grad_accum > 1:
        raise InputError("under DeepSpeed the engine accumulates gradients: set trainer.grad_accum=1 and "
                         "gradient_accumulation_steps in the accelerate config (scripts/launch/accelerate/zero2.yaml)")
    # Each process composed its own run_dir; a default built from ${now:...} can differ by a
    # second between ranks, so every rank takes the main process's.
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    set_seed(t_cfg.seed)
    if torch.cuda.is_available() and t_cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    device = accelerator.device
    weight_dtype = DTYPES[t_cfg.mixed_precision]

    data_path = resolve_data_path(d_cfg, m_cfg, min_pairs=t_cfg.batch_size * accelerator.num_processes)
    resolution = int(d_cfg.resolution or m_cfg.resolution)
    per_image_captions = meth.captions == "per_image"
    vae_dtype = torch.float32 if m_cfg.vae_fp32 else weight_dtype
    cache_cfg = d_cfg.get("cache")
    cache_folder = cache_key_ = None
    cache_ready = False
    if cache_cfg is not None and cache_cfg.enabled:
        cache_key_, cache_folder = latent_cache_location(m_cfg, d_cfg, data_path, resolution, per_image_captions,
                                                         vae_dtype, t_cfg.seed)
        cache_ready = cache_complete(cache_folder, cache_key_)

    # The table first: bad data stops the run before minutes of model loading.
    table, data_summary = load_table(d_cfg, data_path, t_cfg.seed, per_image_captions)

    # Models (a finished latent cache needs neither VAE nor text encoders)
    parts = load_parts(m_cfg.path, family=m_cfg.family, vae_path=m_cfg.vae_path,
                       unet_path=m_cfg.unet_path, revision=m_cfg.revision, variant=m_cfg.variant,
                       with_vae=not cache_ready, with_text_encoders=not cache_ready, **text_options(m_cfg),
                       quantize_base=quantize_base, compute_dtype=compute_dtype(t_cfg.mixed_precision))
    unet = parts.unet
    set_attention_backend(unet, m_cfg.attention)
    if t_cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if t_cfg.get("channels_last"):
        unet.to(memory_format=torch.channels_last)
    if use_lora:
        targets = t_cfg.lora.get("target_modules") or get_family(parts.family).LORA_TARGETS
        add_lora(unet, rank=t_cfg.lora.rank, alpha=t_cfg.lora.alpha, dropout=t_cfg.lora.dropout,
                 target_modules=tuple(targets))
        if quantize_base:
            trainable_to_fp32(unet)  # LoRA over a base loaded in the compute dtype: fp32 master weights
        elif t_cfg.lora.get("base_dtype", "auto") == "auto" and weight_dtype != torch.float32:
            cast_frozen_base(unet, weight_dtype)  # the frozen base in the mixed-precision dtype, LoRA fp32
        elif t_cfg.lora.get("base_dtype", "auto") not in ("auto", "float32"):
            raise InputError(f"trainer.lora.base_dtype={t_cfg.lora.base_dtype!r}: choose auto or float32")
    # A frozen copy is held in the mixed-precision dtype: it never needs fp32 master weights.
    # Made while the UNet is still in CPU RAM, so an offloaded copy never visits the device.
    ref_dtype = weight_dtype if ref_strategy in ("copy", "cpu_offload") and weight_dtype != torch.float32 else None
    reference = make_reference(unet, ref_strategy, dtype=ref_dtype, device=device)
    if not quantize_base:  # a bitsandbytes model is loaded onto this process's GPU (cuda:current_device)
        unet.to(device)
    if t_cfg.get("compile"):
        unet.compile()  # in place (nn.Module.compile): state dicts, LoRA and checkpoints are unchanged
    if parts.vae is not None:
        parts.vae.to(device) if vae_dtype == torch.float32 else parts.vae.to(device, dtype=vae_dtype)
    place_text_encoders(parts.text_encoders, device, weight_dtype, on_cpu=bool(t_cfg.get("text_encoders_on_cpu")))

    family = get_family(parts.family)
    time_ids = m_cfg.get("time_ids", "fixed")
    flow = flow_options(m_cfg)
    guidance = m_cfg.get("guidance")
    family.check_options(time_ids, flow, guidance)
    noising_args = {"noising": meth.noising}
    if meth.noising == "inversion":
        inv = meth.inversion
        if inv.model == "reference" and reference is None:
            raise InputError("method.inversion.model=reference needs a method with a reference model")
        if inv.model not in ("reference", "policy"):
            raise InputError(f"method.inversion.model={inv.model!r}: choose reference (default) or policy (released)")
        evaluate_at = inv.get("evaluate_at", "destination")
        if evaluate_at not in EVALUATE_AT:
            raise InputError(f"method.inversion.evaluate_at={evaluate_at!r}: choose one of {EVALUATE_AT}")
        noising_args.update(inversion_steps=inv.steps, inversion_eta=inv.eta, inversion_model=inv.model,
                            inversion_evaluate_at=evaluate_at)
    if per_image_captions and not {"caption_0", "caption_1"} <= set(table.column_names):
        raise InputError(f"method {meth.name} conditions each image on its own caption, but the data has no "
                         f"per-image captions (columns: {table.column_names}); set "
                         "data.image_caption_columns=[caption for jpg_0, caption for jpg_1]")
    if cache_folder is not None:
        if not cache_ready:
            build_latent_cache(table, cache_folder, cache_key_, vae=parts.vae, text_encoders=parts.text_encoders,
                               tokenizers=parts.tokenizers, family=parts.family, resolution=resolution,
                               flip_variants=cache_cfg.flip_variants, per_image_captions=per_image_captions,
                               storage_dtype=cache_cfg.dtype, shard_size=cache_cfg.shard_size,
                               batch_size=cache_cfg.batch_size, store_std=cache_cfg.get("store_std", True),
                               max_image_pixels=d_cfg.get("max_image_pixels"),
                               process_index=accelerator.process_index,
                               num_processes=accelerator.num_processes, wait=accelerator.wait_for_everyone)
            parts.vae, parts.text_encoders = None, []  # the loop reads the cache only: free them
        dataset = CachedPairs(cache_folder, random_flip=d_cfg.random_flip, seed=t_cfg.seed)
        collate = functools.partial(collate_cached, empty_captions=dataset.empty_captions,
                                    scaling_factor=dataset.info["scaling_factor"],
                                    shift_factor=dataset.info["shift_factor"])
        log.info("training from the latent cache %s (%d rows, %d unreadable at build)", cache_folder,
                 dataset.info["rows"], dataset.info["skipped_rows"])
    else:
        dataset = PreferencePairs(table, resolution=resolution, random_crop=d_cfg.random_crop,
                                  random_flip=d_cfg.random_flip, seed=t_cfg.seed,
                                  max_image_pixels=d_cfg.get("max_image_pixels"))
        collate = collate_pairs
    dataloader = build_dataloader(dataset, batch_size=t_cfg.batch_size, seed=t_cfg.seed,
                                  num_workers=d_cfg.num_workers, prefetch_factor=d_cfg.get("prefetch_factor"),
                                  collate_fn=collate, pin_memory=torch.cuda.is_available(),
                                  num_processes=accelerator.num_processes)

    # Optimisation
    lr = scaled_learning_rate(t_cfg.lr, t_cfg.scale_lr, t_cfg.batch_size, t_cfg.grad_accum,
                              accelerator.num_processes)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, t_cfg.optimizer, lr=lr, weight_decay=t_cfg.weight_decay,
                                betas=(t_cfg.adam_beta1, t_cfg.adam_beta2), eps=t_cfg.adam_eps)
    lr_scheduler = build_lr_scheduler(optimizer, t_cfg.lr_scheduler, t_cfg.warmup_steps, t_cfg.max_steps)
    register_unet_state_hooks(accelerator, use_lora, parts.family)
    unet, optimizer, dataloader = accelerator.prepare(unet, optimizer, dataloader)
    if isinstance(reference, AdaptersOffReference) and accelerator.distributed_type == DistributedType.FSDP:
        reference.run_through(unet)  # the root unit's weights are whole only inside the wrapped forward
    accelerator.register_for_checkpointing(lr_scheduler)  # for accelerate's save_state (DeepSpeed / FSDP)
    contents = CheckpointContents(unet, optimizer, lr_scheduler, use_lora, parts.family)

    step, position, skipped = 0, {"epoch": 0, "batch": 0}, set()
    checkpoint = find_resume_checkpoint(run_dir, t_cfg.resume)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, contents, checkpoint,
                                allow_pickle=t_cfg.get("allow_pickle_checkpoint", False) is True)
        step, skipped = state["step"], set(state.get("skipped_indices", []))
        position = {"epoch": state["epoch"], "batch": state["batch_in_epoch"]}
        log.info("resumed from %s at step %d", checkpoint, step)
    elif t_cfg.resume == "latest":
        log.info("trainer.resume=latest: no checkpoint in %s yet, starting from step 0", run_dir)

    if cfg.logger.name not in (None, "none"):
        init_kwargs = {"wandb": {"mode": cfg.logger.mode, "dir": str(run_dir), "name": run_dir.name}}
        accelerator.init_trackers(cfg.logger.project, config=flat_hparams(OmegaConf.to_container(cfg, resolve=True)),
                                  init_kwargs=init_kwargs)
    writer = MetricsWriter(run_dir / "metrics.jsonl", accelerator.is_main_process, resume_step=step)
    hparams = dict(OmegaConf.to_container(meth.loss, resolve=True))
    if "num_train_timesteps" in hparams and hparams["num_train_timesteps"] is None:
        hparams["num_train_timesteps"] = parts.noise_scheduler.config.num_train_timesteps
    log.info("method %s | %s | trainable params %.2fM | reference %s | lr %.3g | %d pairs",
             meth.name, parts.family, sum(p.numel() for p in trainable) / 1e6, ref_strategy, lr, len(table))

    batches = micro_batches(dataloader, dataset, position, accelerator)
    bar = tqdm(total=t_cfg.max_steps, initial=step, desc=f"train {meth.name}",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    last_checkpoint = checkpoint
    try:
        while step < t_cfg.max_steps:
            started = time.perf_counter()
            records, step_indices, new_skipped = [], [], []
            for micro in range(t_cfg.grad_accum):
                batch = next(batches)
                note_skipped(batch, skipped, new_skipped)
                while batch["size"] == 0:  # every row of the batch was unreadable
                    batch = next(batches)
                    note_skipped(batch, skipped, new_skipped)
                sync = micro == t_cfg.grad_accum - 1
                # One random stream per pair, seeded by (seed, step, micro-batch, dataset index):
                # the same draws whatever the process count, and after a resume.
                generator = PerSampleGenerator.for_batch(t_cfg.seed, step, micro, batch["indices"].tolist(), device)
                with contextlib.nullcontext() if sync else accelerator.no_sync(unet):
                    loss, metrics = preference_step(
                        batch, unet=unet, reference=reference, vae=parts.vae,
                        text_encoders=parts.text_encoders, tokenizers=parts.tokenizers,
                        family=family, noise_scheduler=parts.noise_scheduler,
                        prediction_type=parts.prediction_type, objective=objective,
                        objective_hparams=hparams, generator=generator,
                        caption_dropout=t_cfg.caption_dropout, resolution=resolution,
                        device=device, autocast=accelerator.autocast,
                        per_image_captions=per_image_captions, time_ids=time_ids, flow=flow, guidance=guidance,
                        **noising_args)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"loss is {loss.item()} at step {step + 1} (micro-batch {micro}, dataset rows "
                            f"{batch['indices'].tolist()}); training stopped. Last checkpoint kept: "
                            f"{last_checkpoint or 'none'}. Try a lower trainer.lr, "
                            "trainer.mixed_precision=bf16 or fp32, or check those rows.")
                    accelerator.backward(loss / t_cfg.grad_accum)
                records.append({"loss": loss.detach(), **metrics})
                if t_cfg.get("log_sample_indices"):
                    step_indices.extend(batch["indices"].tolist())
            max_norm = t_cfg.max_grad_norm if t_cfg.max_grad_norm else float("inf")
            grad_norm = accelerator.clip_grad_norm_(trainable, max_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            merge_skipped(skipped, new_skipped, accelerator)

            record = {"step": step, **mean_over_processes(mean_metrics(records), accelerator),
                      "lr": lr_scheduler.get_last_lr()[0],
                      # DeepSpeed clips inside its engine and reports no norm
                      "grad_norm": to_float(grad_norm) if grad_norm is not None else float("nan"),
                      "skipped_rows": len(skipped),
                      "epoch": position["epoch"], "step_time": time.perf_counter() - started}
            if t_cfg.get("log_sample_indices"):  # which pairs the step saw, over all processes
                record["indices"] = sorted(i for part in gather_object([step_indices]) for i in part)
            writer.write(record)
            if step % t_cfg.log_every == 0:
                accelerator.log({k: v for k, v in record.items() if k not in ("step", "indices")}, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", skipped=len(skipped))

            if t_cfg.checkpoint_every and step % t_cfg.checkpoint_every == 0 and step < t_cfg.max_steps:
                state = {"step": step, "epoch": position["epoch"], "batch_in_epoch": position["batch"],
                         "skipped_rows": len(skipped), "skipped_indices": sorted(skipped)}
                last_checkpoint = save_checkpoint(accelerator, contents, run_dir, step, state, t_cfg.keep_last)
            if t_cfg.stop_after_steps and step >= t_cfg.stop_after_steps:
                log.info("trainer.stop_after_steps=%d reached: stopping (resume with trainer.resume=latest)", step)
                accelerator.end_training()
                return run_dir / "final"
    except BaseException:
        accelerator.end_training()  # finish the trackers' runs (and leave the process group)
        raise
    finally:
        bar.close()
        writer.close()

    final = save_final(accelerator, unet, use_lora, parts.family, run_dir, info={
        "base_model": parts.source, "family": parts.family, "method": meth.name,
        "steps": step, "lora": use_lora, "resolution": resolution,
        "prediction_type": parts.prediction_type, "data": data_summary, "skipped_rows": len(skipped),
        "skipped_source_rows": sorted(table.select(sorted(skipped))["source_row"]) if skipped else []})
    log.info("saved %s (%d steps, %d unreadable rows skipped)", final, step, len(skipped))
    accelerator.end_training()  # last: it also destroys the process group save_final synchronises on
    return final
