"""Device memory per model and training setup, from the real denoisers' parameter counts.

Why: to say before renting a GPU which setup fits (full fine-tuning, LoRA, QLoRA; which optimizer
and reference strategy) for SDXL, SD3.5 and FLUX, without downloading a single weight.

Counts: each denoiser config below is the model's published config.json (source named next to
it; nothing is downloaded), instantiated on the meta device (accelerate.init_empty_weights): no
memory, but the exact parameter tensors, the nn.Linear shapes that bitsandbytes quantises, and the
Linear layers the default LoRA targets (the family's LORA_TARGETS, peft's suffix rule) adapt.

Bytes: what this trainer keeps on one GPU per process, without sharding (FSDP / ZeRO-3 divide the
policy's share by the number of GPUs; scripts/launch/accelerate/):
- policy weights: the denoiser is loaded in fp32 and bf16 mixed precision is accelerate's
  autocast, so the trainable weights are fp32 (they are the master weights: there is no second,
  bf16 copy) and the frozen base under LoRA stays fp32 too (4 B/param) unless quantised:
  trainer.quantize_base=nf4: 0.5 B per Linear weight + one fp32 absmax per 64-weight block
  (bitsandbytes' default, no double quantisation), the rest (norms, biases, embeddings, convs) fp32
  after peft.prepare_model_for_kbit_training; int8: 1 B per Linear weight + one fp32 scale per
  output row, the rest fp32. LoRA adds its A / B matrices in fp32. Buffers (SD3's fixed
  position table: 0.23B values in SD3.5-medium, counted in the published 2.5B) are fp32, or in the
  compute dtype (2 B) under a quantised base (peft upcasts parameters only).
- gradients: fp32, trainable parameters only.
- optimizer: AdamW 2 x 4 B per trainable parameter; 8-bit AdamW (bitsandbytes) 2 x 1 B plus one
  fp32 absmax per 256-value block, tensors under 4096 values kept 2 x 4 B (its min_8bit_size);
  Adafactor (transformers', beta1 None as this trainer builds it) factored: one fp32 value per row
  and per column of each matrix (4 x (rows + cols) B), 4 B per value of 1-D tensors.
- reference (DPO / DCPO / InPO): copy = a frozen bf16 copy on the device, 2 B/param and buffer value;
  cpu_offload = 0 on the device (2 B/param of CPU RAM); adapters_off (LoRA) = 0; MaPO / SFT = none.
Not counted: activations (they depend on resolution, batch size and gradient checkpointing),
the text encoders and VAE (none loaded with a complete latent cache; CPU RAM with
trainer.text_encoders_on_cpu), the CUDA context and allocator fragmentation, a few bytes per
quantised layer. GiB = 2**30 bytes.

    python scripts/memory_table.py               # counts and totals (markdown)
    python scripts/memory_table.py --breakdown   # one row per model and setup, by component
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

GIB = 2 ** 30
NF4_BLOCK = 64        # bitsandbytes 4-bit blocksize (one fp32 absmax each)
ADAM8_BLOCK = 256     # bitsandbytes 8-bit optimizer blocksize (one fp32 absmax per state each)
ADAM8_MIN_SIZE = 4096  # bitsandbytes min_8bit_size: smaller tensors keep 32-bit states

# The denoisers, as published (config.json of each model's transformer / unet folder). "stated":
# the size commonly given for the model, to check the counts against.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=list(range(13)))
SD35_LARGE = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
    pos_embed_max_size=192, qk_norm="rms_norm")
FLUX1_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX2_KLEIN_4B = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, mlp_ratio=3.0, guidance_embeds=False,
    axes_dims_rope=[32, 32, 32, 32], rope_theta=2000, timestep_guidance_channels=256, eps=1e-6)


def _family_targets(name: str, fallback: tuple = ()) -> tuple:
    """The family's default LoRA targets (trainer.lora.target_modules: null); `fallback` for a
    family this checkout does not have yet."""
    from t2i_align.errors import InputError
    from t2i_align.families import get_family

    try:
        return tuple(get_family(name).LORA_TARGETS)
    except InputError:
        return fallback


def _klein_targets(config: dict) -> tuple:
    """diffusers' train_dreambooth_lora_flux2_klein.py default: both streams' to_q/k/v/out.0, the
    single blocks' fused to_qkv_mlp_proj and, by full name, their attn.to_out (a plain Linear whose
    bare suffix would also name the double blocks' to_out ModuleList)."""
    singles = tuple(f"single_transformer_blocks.{i}.attn.to_out" for i in range(config["num_single_layers"]))
    return ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj") + singles


@dataclass
class Model:
    """One denoiser: its diffusers class, config, where the config is from, the commonly stated size."""
    name: str
    cls: str
    config: dict
    source: str
    stated: str
    family: str | None = None
    targets: tuple | None = None  # LoRA targets; None: the family's LORA_TARGETS

    def lora_targets(self) -> tuple:
        if self.targets is not None:
            return self.targets
        if self.family == "flux2":
            return _family_targets("flux2", _klein_targets(self.config))
        return _family_targets(self.family)


MODELS = [
    Model("SDXL UNet", "UNet2DConditionModel", SDXL_UNET,
          "stabilityai/stable-diffusion-xl-base-1.0 unet/config.json", "2.57B", "sdxl"),
    Model("SD3.5-medium", "SD3Transformer2DModel", SD35_MEDIUM,
          "stabilityai/stable-diffusion-3.5-medium transformer/config.json", "2.5B", "sd3"),
    Model("SD3.5-large", "SD3Transformer2DModel", SD35_LARGE,
          "stabilityai/stable-diffusion-3.5-large transformer/config.json", "8.1B", "sd3"),
    Model("FLUX.1-dev", "FluxTransformer2DModel", FLUX1_DEV,
          "black-forest-labs/FLUX.1-dev transformer/config.json", "11.9B", "flux"),
    Model("FLUX.2-klein-4B", "Flux2Transformer2DModel", FLUX2_KLEIN_4B,
          "black-forest-labs/FLUX.2-klein-4B transformer/config.json (diffusers-format mirror)", "4B", "flux2"),
]


@dataclass
class Counts:
    """What the byte arithmetic needs from one model: every parameter's shape, every nn.Linear's
    (name, in_features, out_features), the LoRA targets and the number of buffer values."""
    shapes: list = field(default_factory=list)
    linears: list = field(default_factory=list)
    targets: tuple = ()
    buffers: int = 0

    @property
    def total(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def linear_weights(self) -> int:
        return sum(i * o for _, i, o in self.linears)

    def lora_shapes(self, rank: int) -> list:
        """A (r x in) and B (out x r) of every targeted Linear (peft: name == target or ends with
        '.' + target)."""
        hit = [(i, o) for name, i, o in self.linears
               if any(name == t or name.endswith("." + t) for t in self.targets)]
        return [s for i, o in hit for s in ((rank, i), (o, rank))]

    def lora_params(self, rank: int) -> int:
        return sum(math.prod(s) for s in self.lora_shapes(rank))


def meta_model(cls_name: str, config: dict):
    """The diffusers model `cls_name` built from `config` on the meta device (no memory),
    buffers included."""
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return getattr(diffusers, cls_name).from_config(config)


def counts_of(model, targets: tuple) -> Counts:
    """The Counts of an instantiated (meta or real) model."""
    import torch

    linears = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    return Counts([tuple(p.shape) for p in model.parameters()], linears, tuple(targets),
                  sum(b.numel() for b in model.buffers() if b.is_floating_point()))


def base_bytes(counts: Counts, fmt: str) -> float:
    """Bytes of the denoiser's own weights: "fp32", "bf16", "nf4" or "int8" (Linear weights
    quantised, everything else fp32)."""
    rest = 4 * (counts.total - counts.linear_weights) + 2 * counts.buffers
    if fmt == "fp32":
        return 4 * counts.total + 4 * counts.buffers
    if fmt == "bf16":  # LoRA's frozen base in the mixed-precision dtype (trainer.lora.base_dtype=auto)
        return 2 * counts.total + 2 * counts.buffers
    if fmt == "nf4":
        return sum(0.5 * i * o + 4 * math.ceil(i * o / NF4_BLOCK) for _, i, o in counts.linears) + rest
    if fmt == "int8":
        return sum(i * o + 4 * o for _, i, o in counts.linears) + rest
    raise ValueError(f"unknown base format {fmt!r}")


def optimizer_bytes(shapes: list, name: str) -> float:
    """Optimizer state bytes for trainable tensors of `shapes`: "adamw", "adamw8bit", "adafactor"."""
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        if name == "adamw":
            total += 8 * n
        elif name == "adamw8bit":
            total += 8 * n if n < ADAM8_MIN_SIZE else 2 * n + 2 * 4 * math.ceil(n / ADAM8_BLOCK)
        elif name == "adafactor":
            total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])) if len(shape) >= 2 else 4 * n
        else:
            raise ValueError(f"unknown optimizer {name!r}")
    return total


@dataclass
class Setup:
    """A training setup: what trains (rank None = full fine-tuning), the base's format, the
    optimizer, the reference strategy."""
    label: str
    rank: int | None
    base: str
    optimizer: str
    reference: str  # copy | cpu_offload | adapters_off | none


SETUPS = [
    Setup("full FT, AdamW, DPO reference copy (bf16)", None, "fp32", "adamw", "copy"),
    Setup("full FT, AdamW, MaPO / SFT or reference cpu_offload", None, "fp32", "adamw", "none"),
    Setup("full FT, 8-bit AdamW, reference copy", None, "fp32", "adamw8bit", "copy"),
    Setup("full FT, Adafactor, reference copy", None, "fp32", "adafactor", "copy"),
    Setup("LoRA r16, AdamW, bf16 base (the default under bf16), adapters_off", 16, "bf16", "adamw", "adapters_off"),
    Setup("LoRA r32, AdamW, bf16 base, adapters_off", 32, "bf16", "adamw", "adapters_off"),
    Setup("LoRA r16, AdamW, fp32 base (lora.base_dtype=float32), adapters_off", 16, "fp32", "adamw", "adapters_off"),
    Setup("LoRA r16 on an int8 base (quantize_base=int8)", 16, "int8", "adamw", "adapters_off"),
    Setup("QLoRA r16, nf4 base (quantize_base=nf4)", 16, "nf4", "adamw", "adapters_off"),
    Setup("QLoRA r32, nf4 base (quantize_base=nf4)", 32, "nf4", "adamw", "adapters_off"),
]


def setup_bytes(counts: Counts, setup: Setup) -> dict:
    """Bytes by component (weights, lora, grads, optimizer, reference) and their total."""
    trainable = counts.shapes if setup.rank is None else counts.lora_shapes(setup.rank)
    n_trainable = sum(math.prod(s) for s in trainable)
    parts = {"weights": base_bytes(counts, setup.base),
             "lora": 0 if setup.rank is None else 4 * n_trainable,
             "grads": 4 * n_trainable,
             "optimizer": optimizer_bytes(trainable, setup.optimizer),
             "reference": 2 * (counts.total + counts.buffers) if setup.reference == "copy" else 0}
    parts["total"] = sum(parts.values())
    return parts


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _g(n: float) -> str:
    return f"{n / GIB:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--breakdown", action="store_true", help="one row per model and setup, by component")
    args = parser.parse_args(argv)
    counted = [(m, counts_of(meta_model(m.cls, m.config), m.lora_targets())) for m in MODELS]

    print("| model | parameters (stated) | in nn.Linear | LoRA r16 | LoRA r32 | config |")
    print("|---|---|---|---|---|---|")
    for m, c in counted:
        buffers = f" + {_b(c.buffers)} buffer" if c.buffers else ""
        print(f"| {m.name} | {_b(c.total)}{buffers} ({m.stated}) | {100 * c.linear_weights / c.total:.1f}% | "
              f"{_b(c.lora_params(16))} | {_b(c.lora_params(32))} | {m.source} |")
    print()
    if args.breakdown:
        print("| model | setup | weights | LoRA | grads | optimizer | reference | total GiB |")
        print("|---|---|---|---|---|---|---|---|")
        for m, c in counted:
            for s in SETUPS:
                p = setup_bytes(c, s)
                print(f"| {m.name} | {s.label} | " + " | ".join(_g(p[k]) for k in
                      ("weights", "lora", "grads", "optimizer", "reference", "total")) + " |")
        return
    print("| setup (GiB on one GPU, no activations) | " + " | ".join(m.name for m, _ in counted) + " |")
    print("|---|" + "---|" * len(counted))
    for s in SETUPS:
        print(f"| {s.label} | " + " | ".join(_g(setup_bytes(c, s)["total"]) for _, c in counted) + " |")


if __name__ == "__main__":
    main()
