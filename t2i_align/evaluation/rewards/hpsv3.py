"""HPSv3 (Ma et al., "HPSv3: Towards Wide-Spectrum Human Preference Score", ICCV 2025; github
MizzenAI/HPSv3, pip package ``hpsv3``) rebuilt on transformers' own Qwen2-VL classes.

The package pins transformers 4.45.2 and pulls training-only dependencies (trl, deepspeed, peft,
fire); here the scorer is rebuilt from its source, reading these files of the released code:

- ``hpsv3/inference.py`` (``HPSv3RewardInferencer``): processor of the base model
  ``Qwen2-VL-7B-Instruct`` with ``padding_side="right"``; weights ``HPSv3.safetensors`` (hub repo
  ``MizzenAI/HPSv3``) loaded with ``load_state_dict(..., strict=True)`` (a ``{"model": sd}`` torch
  file is unwrapped too); per image a chat message ``[{"type": "image", "min_pixels": 256*28*28,
  "max_pixels": 256*28*28}, {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt) +
  prompt_with_special_token}]``, rendered by the processor's chat template with
  ``add_generation_prompt=True``, batched with ``padding=True`` (right padding); the score is
  ``logits[i][0]`` = mu of the head's ``[mu, sigma]`` ("we select miu as the final output").
- ``hpsv3/train.py`` (``create_model_and_processor``) + ``hpsv3/config/HPSv3_7B.yaml``:
  ``<|Reward|>`` is added to the tokenizer as an additional special token and the embeddings are
  resized to ``len(tokenizer)``; ``rm_head_type: ranknet`` with ``rm_head_kwargs`` left at its
  default ``None``, ``output_dim: 2``, ``reward_token: special``, ``use_special_tokens: true``,
  ``torch_dtype: bfloat16`` (the whole model is cast with ``model.to(torch.bfloat16)``, buffers
  included) and ``model.rm_head.to(torch.float32)``.
- ``hpsv3/model/qwen2vl_trainer.py`` (``Qwen2VLRewardModelBT``): ``rm_head = Sequential(
  Linear(hidden, 1024), ReLU, Dropout(0.05), Linear(1024, 16), ReLU, Linear(16, output_dim))``
  (state-dict keys ``rm_head.0``, ``rm_head.3``, ``rm_head.5``), run in float32 on the final
  (normed) hidden state of the language model at the ``<|Reward|>`` token (``reward_token ==
  "special"``: ``logits[input_ids == special_token_id]``, one per sequence). Its forward builds
  ``inputs_embeds`` itself (token embeddings, vision tower output scattered into the
  ``<|image_pad|>`` positions) and calls the decoder with ``position_ids=None``: the decoder then
  numbers the tokens 0..L-1 on all three M-RoPE axes. It does NOT use Qwen2-VL's 3-D
  (time, height, width) positions for the image tokens; the reward was trained that way, so this
  module passes the same sequential positions explicitly (``Qwen2VLModel.forward`` in
  transformers 5.x would otherwise compute 3-D positions from ``mm_token_type_ids``).
- ``hpsv3/dataset/data_collator_qwen.py``: the instruction text :data:`INSTRUCTION` and the
  suffix :data:`PROMPT_WITH_SPECIAL_TOKEN` (copied byte for byte, trailing spaces included; the
  MizzenAI repository file itself was not readable here, the text was taken from vendored copies
  of it that agree with each other).
- ``hpsv3/dataset/utils.py`` (``fetch_image``, from qwen-vl-utils 0.0.8
  ``qwen_vl_utils/vision_process.py``): RGB conversion, :func:`smart_resize` with
  ``min_pixels = max_pixels = 256 * 28 * 28`` and factor 28 (patch 14 x merge 2), PIL bicubic
  resize. The processor's own resize then leaves the size unchanged (it lies inside its range).

Checkpoint keys: ``HPSv3.safetensors`` was written by transformers 4.45's
``Qwen2VLForConditionalGeneration``: ``visual.*`` (vision tower), ``model.*`` (decoder),
``lm_head.weight`` and ``rm_head.*``; the released inference code remaps them to the
transformers >= 4.52 names ``model.visual.*`` / ``model.language_model.*`` when the strict load
fails. :func:`map_checkpoint_keys` accepts both layouts; ``lm_head.weight`` is not used by the
score and is dropped; any other key that maps nowhere, and any model key the file lacks, raises
an error naming it. (The key names are inferred from that source; the real file was not read.)

The model is built from the base model's CONFIG only (parameters on the meta device), then the
checkpoint's tensors are assigned: the 16 GB base weights of Qwen2-VL-7B-Instruct are never
needed, only its ``config.json`` and processor files.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from .clip_common import batched, check_pairs
from t2i_align.errors import CheckpointMismatchError, InputError, MissingDependencyError

HPSV3_BASE_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
HUB_REPO = "MizzenAI/HPSv3"
CHECKPOINT_FILENAME = "HPSv3.safetensors"
HPSV3_PIXELS = 256 * 28 * 28  # min_pixels = max_pixels in hpsv3/inference.py prepare_batch
REWARD_TOKEN = "<|Reward|>"
MAX_RATIO = 200  # qwen-vl-utils: larger aspect ratios are refused
OUTPUT_DIM = 2  # [mu, sigma]
HEAD_HIDDEN = (1024, 16)  # ranknet head with rm_head_kwargs=None

# hpsv3/dataset/data_collator_qwen.py (INSTRUCTION, prompt_with_special_token), byte for byte.
INSTRUCTION = (
    "\n"
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
    "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst "
    "and 10 being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of "
    "harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or "
    "adult material. If such content is present, the image quality and satisfaction score should be the lowest "
    "possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
    "align with the textual description. The subject should match the description in terms of number, appearance, "
    "and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the "
    "image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image "
    "logically fit the scenario described in the prompt. The environment should support and enhance the subject "
    "without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the "
    "image. The generated content should not introduce elements that conflict with or distort the original "
    "description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)
PROMPT_WITH_SPECIAL_TOKEN = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = HPSV3_PIXELS,
                 max_pixels: int = HPSV3_PIXELS) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize`` -> ``(height, width)``, both multiples of ``factor``.

    Round each side to the nearest multiple of ``factor``; if the area then exceeds ``max_pixels``,
    scale both sides by ``sqrt(h * w / max_pixels)`` and floor to multiples of ``factor``; if it is
    below ``min_pixels``, scale up by ``sqrt(min_pixels / (h * w))`` and ceil. With
    ``min_pixels == max_pixels`` (HPSv3) the area equals that number exactly when the aspect ratio
    allows it (e.g. square images: 448 x 448 = 256 * 28 * 28), otherwise it is the nearest grid
    below (downscaling) or above (upscaling) it.
    """
    if min(height, width) < 1:
        raise InputError(f"image has an empty side: {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise InputError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def hpsv3_resize(image: Image.Image, pixels: int = HPSV3_PIXELS, factor: int = 28) -> Image.Image:
    """HPSv3's ``fetch_image``: RGB, then a bicubic PIL resize to :func:`smart_resize`'s size."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected PIL.Image.Image, got {type(image).__name__}")
    image = image.convert("RGB")
    width, height = image.size
    new_h, new_w = smart_resize(height, width, factor=factor, min_pixels=pixels, max_pixels=pixels)
    return image.resize((new_w, new_h), resample=Image.BICUBIC)


def build_message(prompt: str) -> list[dict]:
    """One chat conversation as in ``hpsv3/inference.py``: the image, then instruction + suffix."""
    text = INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def reward_head(hidden_size: int, output_dim: int = OUTPUT_DIM) -> nn.Sequential:
    """``Qwen2VLRewardModelBT``'s ranknet head (rm_head_kwargs=None); keys rm_head.0 / .3 / .5."""
    return nn.Sequential(
        nn.Linear(hidden_size, HEAD_HIDDEN[0]), nn.ReLU(), nn.Dropout(0.05),
        nn.Linear(HEAD_HIDDEN[0], HEAD_HIDDEN[1]), nn.ReLU(), nn.Linear(HEAD_HIDDEN[1], output_dim),
    )


# checkpoint key layout -> module key; the first matching prefix wins
_KEY_RULES = (
    ("model.visual.", "model.visual."),                  # transformers >= 4.52 layout
    ("model.language_model.", "model.language_model."),  # transformers >= 4.52 layout
    ("visual.", "model.visual."),                        # transformers 4.45 layout (the released file)
    ("model.", "model.language_model."),                 # transformers 4.45 layout (the released file)
    ("rm_head.", "rm_head."),
)
UNUSED_KEYS = ("lm_head.weight",)  # the language-model head: in the file, not part of the score


def _to_model_key(key: str) -> str | None:
    for src, dst in _KEY_RULES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _to_released_key(key: str) -> str:
    """Module key -> the name it has in the released (transformers 4.45) file, for error messages."""
    if key.startswith("model.visual."):
        return "visual." + key[len("model.visual."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def map_checkpoint_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename HPSv3 checkpoint keys to :class:`HPSv3Model` keys; returns (mapped, unexpected keys).

    Both the 4.45 layout and the >= 4.52 layout are accepted; ``lm_head.weight`` is dropped. A key
    no rule covers, or two file keys landing on the same module key, are returned as unexpected.
    """
    mapped, unexpected = {}, []
    for key, value in state.items():
        if key in UNUSED_KEYS:
            continue
        new = _to_model_key(key)
        if new is None or new in mapped:
            unexpected.append(key)
        else:
            mapped[new] = value
    return mapped, unexpected


class HPSv3Model(nn.Module):
    """Qwen2-VL (``transformers.Qwen2VLModel``: vision tower + decoder) + the HPSv3 reward head.

    ``forward`` -> float32 ``[B, 2]`` = ``[mu, sigma]`` read at the ``<|Reward|>`` token.
    """

    def __init__(self, model, reward_token_id: int, output_dim: int = OUTPUT_DIM):
        super().__init__()
        self.model = model
        self.rm_head = reward_head(model.config.text_config.hidden_size, output_dim).float()
        self.reward_token_id = int(reward_token_id)

    def forward(self, input_ids, attention_mask, pixel_values, image_grid_thw) -> torch.Tensor:
        batch, length = input_ids.shape
        # Sequential positions 0..L-1 on all three M-RoPE axes, as the released forward gets them
        # from the decoder's default (see the module docstring); not Qwen2-VL's 3-D image positions.
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0).expand(batch, length)
        dtype = self.model.visual.get_dtype()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         pixel_values=pixel_values.to(dtype), image_grid_thw=image_grid_thw, use_cache=False)
        is_reward = input_ids == self.reward_token_id
        counts = is_reward.sum(-1)
        if not bool((counts == 1).all()):
            raise InputError(f"each sequence needs exactly one {REWARD_TOKEN} token, got counts {counts.tolist()} "
                             f"(does a prompt contain the text {REWARD_TOKEN!r}?)")
        hidden = out.last_hidden_state[is_reward]  # [B, D], row order kept
        return self.rm_head(hidden.float())

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str = "HPSv3 checkpoint") -> None:
        """Assign the checkpoint's tensors (strict: every key must map, every module key must be present,
        shapes must agree; errors name the keys as they are spelled in the file)."""
        mapped, unexpected = map_checkpoint_keys(state)
        own = self.state_dict()
        file_name = {_to_model_key(k): k for k in state if k not in UNUSED_KEYS and _to_model_key(k)}
        unexpected = sorted(set(unexpected) | {file_name[k] for k in mapped if k not in own})
        missing = sorted(_to_released_key(k) for k in own if k not in mapped)
        if unexpected or missing:
            raise CheckpointMismatchError(f"{source} does not match the HPSv3 model: unexpected keys {unexpected[:10]}"
                               f"{'...' if len(unexpected) > 10 else ''}, missing keys {missing[:10]}"
                               f"{'...' if len(missing) > 10 else ''}")
        wrong = [f"{_to_released_key(k)}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointMismatchError(f"{source} does not match the HPSv3 model (shape): {wrong[:5]}; the embedding rows "
                               f"must equal len(tokenizer) with {REWARD_TOKEN} added")
        self.load_state_dict(mapped, strict=True, assign=True)


def default_checkpoint_path() -> pathlib.Path:
    from t2i_align.models.clip_tokenizer import cache_dir

    return cache_dir() / "hpsv3" / CHECKPOINT_FILENAME


def load_checkpoint(checkpoint=None, allow_pickle=None, device="cpu") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, path) from ``HPSv3.safetensors`` (or a ``.pth`` / ``.pt`` torch file), the hub id
    ``"MizzenAI/HPSv3"`` (downloaded with ``huggingface_hub``), or ``$T2I_ALIGN_CACHE/hpsv3/`` when
    None. A ``{"model": state_dict}`` wrapper is unwrapped, as in ``hpsv3/inference.py``. Torch
    files that need pickle are refused unless ``allow_pickle`` names them. Tensors are read straight
    onto ``device`` (no second copy of the 16 GB file in host memory)."""
    from .checkpoint_io import locate_checkpoint, read_weights

    path, aliases = locate_checkpoint(checkpoint, HUB_REPO, CHECKPOINT_FILENAME, default_checkpoint_path(), "HPSv3",
                                      "checkpoint", f"the hub repo {HUB_REPO}")
    state = read_weights(path, allow_pickle=allow_pickle, aliases=aliases, device=str(device))
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, str(path)


class HPSv3Reward:
    """Callable reward: ``reward(images, prompts) -> float32 [N]`` on CPU, the HPSv3 mu.

    :meth:`predict` returns ``[N, 2]`` = ``[mu, sigma]`` (sigma: the head's uncertainty output).
    """

    name = "hpsv3"
    description = "hpsv3: mu of HPSv3's [mu, sigma] head (Qwen2-VL-7B reward model, MizzenAI/HPSv3)"

    def __init__(self, model: HPSv3Model, processor, batch_size: int = 4, pixels: int = HPSV3_PIXELS):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.batch_size = int(batch_size)
        self.pixels = int(pixels)
        image_processor = processor.image_processor
        self.patch_size = int(image_processor.patch_size)
        self.factor = self.patch_size * int(image_processor.merge_size)

    def prepare(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """The processor's batch (right-padded) for these pairs, on CPU, as the model receives it."""
        check_pairs(images, prompts)
        resized = [hpsv3_resize(im, self.pixels, self.factor) for im in images]
        texts = self.processor.apply_chat_template([build_message(p) for p in prompts], tokenize=False,
                                                   add_generation_prompt=True)
        batch = self.processor(text=texts, images=resized, padding=True, return_tensors="pt")
        expected = torch.tensor([[1, im.size[1] // self.patch_size, im.size[0] // self.patch_size] for im in resized])
        if not torch.equal(batch["image_grid_thw"].cpu(), expected):
            raise RuntimeError(f"the processor resized the images again (grids {batch['image_grid_thw'].tolist()}, "
                               f"expected {expected.tolist()}): its min/max pixels must admit {self.pixels} pixels")
        return batch

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        check_pairs(images, prompts)
        images, prompts = list(images), list(prompts)
        device = next(self.model.parameters()).device
        out = []
        for imgs, txts in zip(batched(images, self.batch_size), batched(prompts, self.batch_size)):
            b = self.prepare(imgs, txts)
            out.append(self.model(b["input_ids"].to(device), b["attention_mask"].to(device),
                                  b["pixel_values"].to(device), b["image_grid_thw"].to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, OUTPUT_DIM, dtype=torch.float32)

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        return self.predict(images, prompts)[:, 0].contiguous()


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}")
    return value


def load_processor(base_model: str = HPSV3_BASE_MODEL):
    """The base model's processor, right padding, with ``<|Reward|>`` added -> (processor, reward id)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base_model, padding_side="right")
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    if getattr(processor, "chat_template", None) is None:
        raise InputError(f"the processor of {base_model} has no chat template (Qwen2-VL-7B-Instruct ships one)")
    return processor, reward_id


def load_hpsv3(checkpoint=None, base_model: str = HPSV3_BASE_MODEL, device="cpu", dtype=torch.bfloat16,
               batch_size: int = 4, pixels: int = HPSV3_PIXELS, attn_implementation: str = "sdpa",
               allow_pickle=None) -> HPSv3Reward:
    """Load HPSv3 on ``device`` / ``dtype`` (default bfloat16 as released; the head stays float32).

    ``checkpoint``: local ``HPSv3.safetensors`` (or a torch file), ``"MizzenAI/HPSv3"`` (hub
    download), or None (``$T2I_ALIGN_CACHE/hpsv3/HPSv3.safetensors``). ``base_model``: hub id or
    local folder of Qwen2-VL-7B-Instruct; only its ``config.json`` and processor files are read.
    ``pixels``: the image area (min = max pixels, 256 * 28 * 28 as released). ``allow_pickle``:
    the checkpoint's path if it is a torch file that needs pickle and you trust it.
    """
    from transformers import AutoConfig, Qwen2VLModel

    try:
        from accelerate import init_empty_weights
    except ImportError as err:  # pragma: no cover - accelerate is a project dependency
        raise MissingDependencyError("load_hpsv3 needs accelerate (init_empty_weights)") from err

    dtype = _dtype(dtype)
    state, source = load_checkpoint(checkpoint, allow_pickle=allow_pickle, device=device)
    processor, reward_id = load_processor(base_model)
    config = AutoConfig.from_pretrained(base_model)
    if getattr(config, "model_type", None) != "qwen2_vl":
        raise InputError(f"{base_model} is a {getattr(config, 'model_type', '?')} model, HPSv3 needs Qwen2-VL")
    # train.py: model.resize_token_embeddings(len(processor.tokenizer)) after adding <|Reward|>
    config.text_config.vocab_size = len(processor.tokenizer)
    with init_empty_weights(include_buffers=False):  # parameters on meta: the file provides them all
        qwen = Qwen2VLModel._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model = HPSv3Model(qwen, reward_id)
    model.load_checkpoint_state(state, source=source)
    del state
    # train.py: model.to(bfloat16) (buffers too, e.g. the RoPE inv_freq), then rm_head.to(float32);
    # the head is never cast down here, so a float32 head in the file keeps its precision
    model.model.to(device=device, dtype=dtype)
    model.rm_head.to(device=device, dtype=torch.float32)
    return HPSv3Reward(model, processor, batch_size=batch_size, pixels=pixels)


__all__ = ["HPSv3Model", "HPSv3Reward", "INSTRUCTION", "PROMPT_WITH_SPECIAL_TOKEN", "build_message", "hpsv3_resize",
           "load_hpsv3", "map_checkpoint_keys", "smart_resize", "HPSV3_PIXELS", "REWARD_TOKEN"]
