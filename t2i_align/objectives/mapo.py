"""MaPO loss (Hong et al., "Margin-aware Preference Optimization for Aligning Diffusion Models
without Reference", arXiv 2406.06424 v2; mapo-t2i/mapo utils.py).

    f(x)     = x / (exp(x) - 1)                     bounded in (0, 1], f(0) = 1
    log_odds = f(a * E_w) - f(a * E_l)              a = "snr_value" = 0.5
    loss     = mean(E_w) - beta * mean(logsigmoid(T * log_odds))   T = 1000, beta = 0.1

No reference model. The released code evaluates x / (exp(x) - 1) directly, which is 0/0 at
x = 0 and loses precision for small x; we use expm1 and a Taylor series near 0.
Note: the log1p "ORPO" form from an unmerged diffusers PR is a different objective.
"""

import torch
import torch.nn.functional as F

NEEDS_REFERENCE = False
USES_REJECTED = True

_SERIES_BELOW = 1e-3


def odds_transform(x: torch.Tensor) -> torch.Tensor:
    """f(x) = x / (exp(x) - 1), stable at and near 0 (series 1 - x/2 + x^2/12 - x^4/720)."""
    small = x.abs() < _SERIES_BELOW
    safe_x = torch.where(small, torch.ones_like(x), x)
    direct = safe_x / torch.expm1(safe_x)
    x2 = x * x
    series = 1.0 - 0.5 * x + x2 / 12.0 - x2 * x2 / 720.0
    return torch.where(small, series, direct)


def mapo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    beta: float = 0.1,
    snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, metrics) from per-sample errors of shape [B]."""
    f_w = odds_transform(snr_value * model_err_w)
    f_l = odds_transform(snr_value * model_err_l)
    log_odds = f_w - f_l
    margin = F.logsigmoid(num_train_timesteps * log_odds)
    margin_term = -beta * margin.mean()
    loss = model_err_w.mean() + margin_term
    with torch.no_grad():
        metrics = {
            "margin_term": margin_term.detach(),
            "log_odds": log_odds.mean(),
            "f_w": f_w.mean(),
            "f_l": f_l.mean(),
            "model_err_w": model_err_w.mean(),
            "model_err_l": model_err_l.mean(),
            "implicit_acc": (log_odds > 0).float().mean() + 0.5 * (log_odds == 0).float().mean(),
        }
    return loss, metrics
