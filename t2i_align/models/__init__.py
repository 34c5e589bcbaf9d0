"""Model parts for t2i_align: loading SDXL / SD 2.1 / SD 1.5, prompt encoding, VAE latents,
attention backend, LoRA, reference-model strategies, and tiny test pipelines.

Submodules import diffusers / transformers / peft lazily inside functions, so importing this
package stays cheap.
"""

from .attention import ATTENTION_BACKENDS, set_attention_backend
from .clip_tokenizer import cache_dir, offline_clip_tokenizer
from .loading import DiffusionParts, load_parts
from .lora import add_lora, load_lora_trainable_state, lora_trainable_state, save_lora
from .prompt_encoding import encode_prompts
from .reference import REFERENCE_STRATEGIES, has_adapters, make_reference
from .tiny import TINY_KINDS, TINY_RESOLUTION, TINY_VERSION, build_tiny_pipeline, resolve_model_path

__all__ = [
    "ATTENTION_BACKENDS",
    "DiffusionParts",
    "REFERENCE_STRATEGIES",
    "TINY_KINDS",
    "TINY_RESOLUTION",
    "TINY_VERSION",
    "add_lora",
    "build_tiny_pipeline",
    "cache_dir",
    "encode_prompts",
    "has_adapters",
    "load_lora_trainable_state",
    "load_parts",
    "lora_trainable_state",
    "make_reference",
    "offline_clip_tokenizer",
    "resolve_model_path",
    "save_lora",
    "set_attention_backend",
]
