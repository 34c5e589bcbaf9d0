"""Supervised fine-tuning on the chosen image only: the baseline of the Diffusion-DPO and MaPO
papers (plain denoising MSE on x_w, no reference, the rejected image unused)."""

import torch

NEEDS_REFERENCE = False
USES_REJECTED = False


def sft_loss(model_err_w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, metrics): the mean of the per-sample errors of the chosen images."""
    loss = model_err_w.mean()
    return loss, {"model_err_w": loss.detach()}
