"""Optimizers and learning-rate schedules.

AdamW (torch), 8-bit AdamW (bitsandbytes, optional extra `bnb`; the MaPO README recipe) and
Adafactor with a fixed learning rate (the Diffusion-DPO SDXL recipe:
relative_step=False, scale_parameter=False). Schedules come from diffusers.optimization.
"""

import torch
from diffusers.optimization import get_scheduler
from t2i_align.errors import InputError, MissingDependencyError

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")


def build_optimizer(params, name: str, lr: float, weight_decay: float = 1e-2,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """Create the optimizer `name` over `params` (an iterable of trainable tensors)."""
    params = list(params)
    if not params:
        raise InputError("no trainable parameters: check trainer.lora / the model's requires_grad")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise MissingDependencyError("trainer.optimizer=adamw8bit needs bitsandbytes: "
                              "pip install 't2i_align[bnb]'") from err
        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=weight_decay)
    raise InputError(f"unknown trainer.optimizer {name!r}; choose one of {OPTIMIZERS}")


def build_lr_scheduler(optimizer, name: str, warmup_steps: int, max_steps: int):
    """A diffusers LR schedule (constant, constant_with_warmup, linear, cosine, ...), stepped
    once per optimizer step."""
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=max_steps)


def scaled_learning_rate(lr: float, scale_lr: bool, batch_size: int, grad_accum: int,
                         num_processes: int) -> float:
    """Diffusion-DPO scales its base lr by the effective batch (1e-8 x 2048 = 2.048e-5)."""
    return lr * batch_size * grad_accum * num_processes if scale_lr else lr
