"""Diffusion-DPO loss (Wallace et al., "Diffusion Model Alignment Using Direct Preference
Optimization", arXiv 2311.12908, Eq. 14; SalesforceAIResearch/DiffusionDPO train.py).

With E = per-sample MSE of the trainable model and R = the same for the frozen reference,
the preference logit is

    inside = -beta / 2 * ((E_w - E_l) - (R_w - R_l))
    loss   = mean(-logsigmoid(inside))

The mean sits outside logsigmoid (one diffusers example put it inside, which is a different,
wrong objective). When the policy equals the reference, inside = 0 and the loss is ln 2.
DCPO and InPO reuse this loss unchanged; they differ in conditioning and in how x_t is made.
"""

import torch
import torch.nn.functional as F

NEEDS_REFERENCE = True
USES_REJECTED = True


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float = 5000.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, metrics) from per-sample errors of shape [B].

    Metrics: implicit_acc = fraction of pairs with inside > 0 (ties count one half, as in the
    diffusers DPO example), the four mean errors, and the policy / reference MSE as logged by
    the paper code (0.5 * (mean E_w + mean E_l)).
    """
    model_diff = model_err_w - model_err_l
    ref_diff = ref_err_w - ref_err_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():
        implicit_acc = (inside > 0).float().mean() + 0.5 * (inside == 0).float().mean()
        metrics = {
            "implicit_acc": implicit_acc,
            "inside_term": inside.mean(),
            "model_err_w": model_err_w.mean(),
            "model_err_l": model_err_l.mean(),
            "ref_err_w": ref_err_w.mean(),
            "ref_err_l": ref_err_l.mean(),
            "model_mse": 0.5 * (model_err_w.mean() + model_err_l.mean()),
            "ref_mse": 0.5 * (ref_err_w.mean() + ref_err_l.mean()),
        }
    return loss, metrics
