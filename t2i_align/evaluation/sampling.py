"""Generate evaluation images with the same prompts and seeds for every model, cached on disk.

A model is a base pipeline (hub id, local folder, tiny:<kind>, toy:sdxl or toy:sd3) plus optionally a
trained UNet folder (a full fine-tuning run's final/ or a checkpoint's unet/), LoRA weights (a
run's final/ with pytorch_lora_weights.safetensors) and another VAE.

Images are stored as <cache>/<key digest>/<prompt hash>_<seed>.png. The digest hashes the
model's cache key (model_cache_key): the base model by content (or a hub id's snapshot commit)
with its variant, the UNet / LoRA / VAE weights by content (see fingerprint.py), the LoRA scale,
the scheduler config, the dtype and device type, steps, guidance scale, resolution and negative
prompt. A model's name is for display only: a name or a path reused with other weights gets a
new folder (its images are regenerated, never re-scored stale), and unchanged weights under
another name or copied elsewhere find their images again. Re-scoring, adding a model or adding
prompts never regenerates what exists. Each folder also holds model.json (the key in full, and
the names and paths it was seen as, so a person can tell what it holds) and prompts.json
(prompt hash -> prompt).

Jobs of a parallel sweep may share one cache: an image is written under a unique temporary name
in its folder and published with os.replace, so a reader sees a complete PNG or none; model.json
and prompts.json are read, merged and rewritten (temporary file + os.replace) under an flock on
<folder>/.lock, so no job loses another's entries. Where the filesystem has no flock (e.g.
Lustre mounted without -o flock) the merge runs unlocked with a warning: files stay whole, but
two jobs adding prompts at the same instant can drop one's index entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from t2i_align.evaluation import fingerprint
from t2i_align.errors import InputError, InputNotFoundError

log = logging.getLogger("t2i_align.sampling")

KEY_FORMAT = 1  # bump when the key's meaning changes (every model then gets new folders)
MODEL_FILE = "model.json"
PROMPTS_FILE = "prompts.json"
LOCK_FILE = ".lock"
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "bf16": "bfloat16"}


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ModelKey:
    """What determines a model's images (`key`, hashed into its cache folder's name) and where it
    came from (`source`: display name and paths, recorded in model.json but not hashed)."""

    key: dict
    source: dict

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self, cache_dir) -> Path:
        return Path(cache_dir) / self.digest


def _plain(obj):
    """A JSON round trip: tuples become lists, so keys compare equal to what model.json holds."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return _DTYPE_ALIASES.get(name, name)


def _scheduler_config(config) -> dict:
    return _plain({k: v for k, v in dict(config).items() if not k.startswith("_")})


def pipeline_sources(spec: dict, base) -> dict:
    """load_pipeline's arguments for model `spec` ({unet?, lora?, vae?}) on `base` (a path or
    hub id, or a mapping like cfg.model: path, revision, variant, vae_path, unet_path). The
    base's unet_path / vae_path apply unless the spec brings its own, as in training."""
    base = {"path": base} if isinstance(base, (str, os.PathLike)) else base
    return {"base": str(base["path"]), "unet": spec.get("unet") or base.get("unet_path"),
            "lora": spec.get("lora"), "vae": spec.get("vae") or base.get("vae_path"),
            "revision": base.get("revision"), "variant": base.get("variant"), "family": base.get("family"),
            "text_options": text_options_of(base)}


def text_options_of(base) -> dict | None:
    """The T5 families' text settings of a model config (max_sequence_length when set, use_t5 when
    false), so that sampling encodes prompts as training did; None when the config sets neither
    (every UNet family), which keeps those image-cache keys unchanged."""
    if isinstance(base, (str, os.PathLike)):
        return None
    options = {}
    if base.get("max_sequence_length") is not None:
        options["max_sequence_length"] = int(base["max_sequence_length"])
    if base.get("use_t5") is False:
        options["use_t5"] = False
    return options or None


def _hub_identity(repo_id: str, revision: str | None) -> dict:
    commit = fingerprint.hub_commit(repo_id, revision)
    return {"hub_id": repo_id, "commit": commit} if commit else {"hub_id": repo_id, "revision": revision or "main"}


def _base_identity(path: str, revision: str | None) -> tuple[dict, Path | None]:
    """(identity of the base pipeline, its local folder if any). Local folders are keyed by
    content alone, so a copy elsewhere is the same model. That includes tiny:<kind> (built in
    code from fixed seeds, saved once under $T2I_ALIGN_CACHE/tiny/<kind>-<version>) and toy:sdxl / toy:sd3
    (shipped in the package): keyed by the folder they resolve to, they equal that folder given
    as a path, and a rebuilt tiny model or re-pretrained toy model with other bytes is another
    model. The spelling (tiny:sdxl) is kept in the source. Hub ids: by snapshot commit."""
    from t2i_align.models.loading import _is_local
    from t2i_align.models.tiny import resolve_model_path

    resolved = resolve_model_path(path)
    if os.path.isdir(resolved):
        folder = Path(resolved).expanduser()
        return {"content": fingerprint.files_fingerprint(folder, fingerprint.pipeline_files(folder))}, folder
    if _is_local(resolved):
        raise InputNotFoundError(f"model path {path} does not exist (expected a diffusers pipeline folder)")
    return _hub_identity(resolved, revision), fingerprint.hub_snapshot(resolved, revision)


def _component_identity(path: str, subfolder: str, what: str) -> dict:
    """A UNet / VAE override: its folder's config and weights by content, or a hub id."""
    from t2i_align.models.loading import _is_local, _override_location

    src, sub = _override_location(str(path), subfolder, what)
    if not _is_local(src):
        return _hub_identity(src, None)
    folder = Path(src) / (sub or "")
    return {"content": fingerprint.files_fingerprint(folder, fingerprint.component_files(folder))}


def _lora_identity(path: str) -> dict:
    if not os.path.exists(path):
        return _hub_identity(path, None)
    files = fingerprint.lora_files(path)
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    return {"content": fingerprint.files_fingerprint(root, files, with_names=len(files) > 1)}


def _scheduler_identity(given, folder: Path | None) -> dict | None:
    """The sampling scheduler: settings["scheduler"] (a scheduler or its config) when the pipeline
    uses another one than the base's, else the base's scheduler/scheduler_config.json."""
    if given is not None:
        config = given.config if hasattr(given, "config") else given
        name = type(given).__name__ if hasattr(given, "config") else given.get("_class_name")
        return {"class": name, "config": _scheduler_config(config)}
    file = None if folder is None else folder / "scheduler" / "scheduler_config.json"
    if file is None or not file.is_file():
        return None  # a hub model not downloaded yet: its commit / revision stands for it
    config = json.loads(file.read_text())
    return {"class": config.get("_class_name"), "config": _scheduler_config(config)}


def _source_path(path):
    if path is None:
        return None
    return str(Path(path).expanduser().resolve()) if os.path.exists(path) else str(path)


def model_cache_key(spec: dict, base, settings: dict) -> ModelKey:
    """The cache key of model `spec` ({name?, unet?, lora?, lora_scale?, vae?}, as model_specs
    makes them) on `base` (see pipeline_sources) sampled with `settings`: steps, guidance_scale,
    resolution (required); negative_prompt (None), dtype (float32), device ("cpu": only its type
    counts) and scheduler (the base's) as the pipeline will sample. Everything that changes the
    images is in the key; the name and paths only in its source (see the module docstring)."""
    missing = [k for k in ("steps", "guidance_scale", "resolution") if settings.get(k) is None]
    if missing:
        raise InputError(f"model_cache_key: settings lack {missing}")
    src = pipeline_sources(spec, base)
    base_id, base_folder = _base_identity(src["base"], src["revision"])
    lora = None
    if src["lora"]:
        scale = 1.0 if spec.get("lora_scale") is None else float(spec["lora_scale"])  # 0 is a scale too
        lora = {"weights": _lora_identity(str(src["lora"])), "scale": scale}
    key = {
        "format": KEY_FORMAT,
        "base": base_id,
        "variant": src["variant"],
        "unet": _component_identity(src["unet"], "unet", "UNet") if src["unet"] else None,
        "vae": _component_identity(src["vae"], "vae", "VAE") if src["vae"] else None,
        "lora": lora,
        **({"text": src["text_options"]} if src["text_options"] else {}),
        "scheduler": _scheduler_identity(settings.get("scheduler"), base_folder),
        "dtype": _dtype_name(settings.get("dtype") or torch.float32),
        "device": torch.device(settings.get("device") or "cpu").type,
        "sampling": {"steps": int(settings["steps"]), "guidance_scale": float(settings["guidance_scale"]),
                     "resolution": int(settings["resolution"]), "negative_prompt": settings.get("negative_prompt")},
    }
    source = {"name": spec.get("name"), "base": src["base"], "unet": _source_path(src["unet"]),
              "lora": _source_path(src["lora"]), "vae": _source_path(src["vae"])}
    return ModelKey(_plain(key), _plain(source))


def pipeline_class(family: str | None = None, model_index: dict | None = None):
    """The diffusers pipeline class that samples `family` (t2i_align/families/: its
    pipeline_class(model_index), model_index: the base's model_index.json, which picks FLUX.2's
    [dev] or [klein] pipeline); None: diffusers' AutoPipelineForText2Image, which picks the class
    from the base's model_index.json (any text-to-image pipeline diffusers knows)."""
    if family is None:
        from diffusers import AutoPipelineForText2Image

        return AutoPipelineForText2Image
    from t2i_align.families import get_family

    return get_family(family).pipeline_class(model_index)


def load_pipeline(base: str, unet: str | None = None, lora: str | None = None, device="cpu",
                  dtype=torch.float32, vae: str | None = None, revision: str | None = None,
                  variant: str | None = None, family: str | None = None, text_options: dict | None = None):
    """A diffusers text-to-image pipeline for `base` (at `revision`, reading `variant` weights),
    with a trained UNet folder or LoRA loaded, and optionally another VAE (e.g. an fp16-safe
    SDXL VAE). unet / vae: a model folder, a pipeline or run folder with unet/ / vae/, or a hub id.
    family: the model family (model.family), whose pipeline class and denoiser loader are used;
    None picks the pipeline from the base's model_index.json (pipeline_class). text_options
    (text_options_of(cfg.model)): use_t5=False loads no T5 (the pipeline feeds zeros, as training
    did); max_sequence_length is set as the T5 tokenizer's model_max_length, which
    families.pipeline_call_kwargs passes to every call."""
    from diffusers import AutoencoderKL

    from t2i_align.models.loading import _override_location, dtype_argument
    from t2i_align.models.tiny import resolve_model_path

    base = resolve_model_path(base)
    if family is None and os.path.isdir(base):  # a local folder says its family (a trained transformer needs it)
        from diffusers import DiffusionPipeline

        from t2i_align.families import detect_family

        family = detect_family(DiffusionPipeline.load_config(base))
    kwargs = {**dtype_argument(dtype), "revision": revision, "variant": variant}
    if unet is not None:  # the trained denoiser (a UNet, or a transformer for the flow families)
        name = "unet"
        if family is not None:
            from t2i_align.families import get_family

            name = get_family(family).DENOISER_SUBFOLDER
        src, sub = _override_location(str(unet), name, "UNet" if name == "unet" else "transformer")
        kwargs[name] = _load_denoiser(family, src, sub, **dtype_argument(dtype))
    if vae is not None:  # the family's VAE class (FLUX.2's AutoencoderKLFlux2), AutoencoderKL without a family
        from t2i_align.families import get_family

        vae_class = get_family(family).vae_class() if family is not None else AutoencoderKL
        src, sub = _override_location(str(vae), "vae", "VAE")
        kwargs["vae"] = vae_class.from_pretrained(src, subfolder=sub, **dtype_argument(dtype))
    options = text_options or {}
    if options.get("use_t5") is False:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    model_index = None
    if family is not None:
        from diffusers import DiffusionPipeline

        model_index = DiffusionPipeline.load_config(base, revision=revision)
    pipe = pipeline_class(family, model_index).from_pretrained(base, **kwargs)
    if options.get("max_sequence_length") is not None and getattr(pipe, "tokenizer_3", None) is not None:
        pipe.tokenizer_3.model_max_length = int(options["max_sequence_length"])
    if options:
        pipe.t2i_text_options = dict(options)  # read by families.pipeline_call_kwargs
    if lora is not None:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_denoiser(family: str | None, source: str, subfolder: str | None, **kwargs):
    """A trained denoiser folder: the family's loader, or (family unknown) a UNet2DConditionModel."""
    if family is None:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, **kwargs)
    from t2i_align.families import get_family

    return get_family(family).load_denoiser(source, subfolder, **kwargs)


def check_pipeline(pipe, model_key: ModelKey) -> None:
    """Refuse to fill a cache folder with images from a pipeline sampling otherwise than its key
    says (dtype, device type, scheduler class and config). Weights cannot be checked cheaply:
    the key must come from the same spec the pipeline was loaded from."""
    key, problems = model_key.key, []
    dtype = getattr(pipe, "dtype", None)
    if dtype is not None and _dtype_name(dtype) != key["dtype"]:
        problems.append(f"dtype {_dtype_name(dtype)} vs key {key['dtype']}")
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    if device is not None and torch.device(device).type != key["device"]:
        problems.append(f"device {torch.device(device).type} vs key {key['device']}")
    scheduler, wanted = getattr(pipe, "scheduler", None), key.get("scheduler")
    if scheduler is not None and wanted is not None and hasattr(scheduler, "config"):
        if type(scheduler).__name__ != wanted["class"]:
            problems.append(f"scheduler {type(scheduler).__name__} vs key {wanted['class']}")
        else:
            expected = _scheduler_config(type(scheduler).from_config(wanted["config"]).config)
            got = _scheduler_config(scheduler.config)
            changed = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
            if changed:
                problems.append(f"scheduler config differs in {changed}")
    if problems:
        raise InputError(f"the pipeline does not match its cache key ({'; '.join(problems)}): make the key "
                         "with the settings it samples with (settings dtype, device, scheduler=pipe.scheduler)")


def image_path(cache_dir, model_key: ModelKey, prompt: str, seed: int) -> Path:
    return model_key.folder(cache_dir) / f"{prompt_key(prompt)}_{seed}.png"


def cached_images(cache_dir, model_key: ModelKey, prompts: list[str], seeds: list[int]) -> tuple[dict, list]:
    """({(prompt, seed): path} for every pair, [(prompt, seed) whose image is not cached yet])."""
    paths = {(p, s): image_path(cache_dir, model_key, p, s) for p in prompts for s in seeds}
    return paths, [k for k, path in paths.items() if not path.is_file()]


def cache_folders(cache_dir, name: str | None = None) -> list[Path]:
    """The model folders of a cache (those seen under display name `name`, if given)."""
    found = []
    for folder in sorted(Path(cache_dir).iterdir()) if Path(cache_dir).is_dir() else []:
        meta = _read_json(folder / MODEL_FILE)
        if meta is not None and (name is None or name in [s.get("name") for s in meta.get("seen_as", [])]):
            found.append(folder)
    return found


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not valid JSON: rewritten", path)
        return None


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `path` so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_image(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)  # a killed job never leaves a half-written image that looks cached
    finally:
        tmp.unlink(missing_ok=True)


_warned_no_lock = False


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive flock on <folder>/.lock (across processes and, on NFS / Lustre with flock,
    across nodes); unlocked with a warning where the filesystem refuses flock."""
    global _warned_no_lock
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    with open(folder / LOCK_FILE, "a") as handle:
        try:
            if fcntl is None:
                raise OSError("no fcntl")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if not _warned_no_lock:
                log.warning("no flock on %s (%s): cache index merges are not protected", folder, err)
                _warned_no_lock = True
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _register(folder: Path, model_key: ModelKey, prompts: list[str]) -> None:
    """Record the key and source in model.json and the prompts in prompts.json (merged with what
    other jobs wrote). Nothing is written when both already hold everything, so evaluating from
    a complete read-only cache works."""
    wanted = {prompt_key(p): p for p in prompts}

    def complete(meta, index):
        return (meta is not None and model_key.source in meta.get("seen_as", [])
                and wanted.items() <= (index or {}).items())

    if complete(_read_json(folder / MODEL_FILE), _read_json(folder / PROMPTS_FILE)):
        return
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        meta, index = _read_json(folder / MODEL_FILE), _read_json(folder / PROMPTS_FILE) or {}
        if meta is not None and meta.get("key") != model_key.key:
            raise RuntimeError(f"{folder / MODEL_FILE} holds another key than {model_key.key} (digest collision "
                               "or an edited file): move the folder away")
        if meta is None:
            meta = {"format": KEY_FORMAT, "digest": model_key.digest, "key": model_key.key, "seen_as": []}
        if model_key.source not in meta["seen_as"]:
            meta["seen_as"].append(model_key.source)
            _atomic_write_text(folder / MODEL_FILE, json.dumps(meta, indent=1, sort_keys=True))
        if not wanted.items() <= index.items():
            index.update(wanted)
            _atomic_write_text(folder / PROMPTS_FILE, json.dumps(index, indent=1, sort_keys=True))


def generate_cached(pipe, model_key: ModelKey, prompts: list[str], seeds: list[int], cache_dir,
                    batch_size: int = 4) -> tuple[dict, int]:
    """Images for every (prompt, seed), generating only those the cache lacks.

    model_key (from model_cache_key) sets the folder and the sampling: steps, guidance scale,
    resolution, negative prompt and LoRA scale are read from it, so the images always match
    their key; the pipeline is checked against its dtype, device and scheduler. `pipe` may be
    None when everything is cached. Each image has its own torch.Generator seeded with its seed,
    so a (prompt, seed) gives the same starting noise for every model and every batch
    composition. Returns ({(prompt, seed): path}, number generated now).
    """
    if not isinstance(model_key, ModelKey):
        raise TypeError(f"generate_cached needs a ModelKey from model_cache_key(spec, base, settings), got "
                        f"{model_key!r}: a name alone cannot tell which weights made the cached images")
    paths, missing = cached_images(cache_dir, model_key, prompts, seeds)
    if missing and pipe is None:
        raise InputError(f"{len(missing)} images of {model_key.source.get('name')} are not cached "
                         "and no pipeline was given")
    if missing:
        check_pipeline(pipe, model_key)
    _register(model_key.folder(cache_dir), model_key, prompts)
    if not missing:
        return paths, 0
    sampling, lora = model_key.key["sampling"], model_key.key["lora"]
    from t2i_align.families import negative_prompt_kwargs, pipeline_call_kwargs

    extra = pipeline_call_kwargs(pipe, lora["scale"] if lora is not None and lora["scale"] != 1.0 else None)
    name = model_key.source.get("name") or model_key.digest
    for start in tqdm(range(0, len(missing), batch_size), desc=f"generate {name}"):
        chunk = missing[start:start + batch_size]
        extra.pop("negative_prompt", None)
        extra.update(negative_prompt_kwargs(pipe, sampling["negative_prompt"], len(chunk)))
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        out = pipe(prompt=[p for p, _ in chunk], num_inference_steps=sampling["steps"],
                   guidance_scale=sampling["guidance_scale"], height=sampling["resolution"],
                   width=sampling["resolution"], generator=generators, **extra)
        for (p, s), image in zip(chunk, out.images):
            _save_image(image, paths[(p, s)])
    return paths, len(missing)


def open_images(paths: dict, keys: list) -> list[Image.Image]:
    return [Image.open(paths[k]).convert("RGB") for k in keys]
