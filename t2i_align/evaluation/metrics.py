"""Aggregate reward scores: means with confidence intervals, and win rates against a baseline.

Pure functions on score tensors, so the arithmetic is testable by hand. The normal
approximation is used for means (mean +- z * s / sqrt(n), s with n - 1 degrees of freedom),
the Wilson interval for 0/1 scores (rates);
win rates use the Wilson score interval, which stays inside [0, 1] and behaves near 0 and 1
(Wilson 1927), with ties counted as half a win as in the Diffusion-DPO / MaPO human evals.
"""

import math
from statistics import NormalDist

import torch


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile: 1.959964 for 0.95."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate p observed over n trials."""
    z = z_value(confidence)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_confidence_interval(values: torch.Tensor, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of `values` [N]; a single value has a zero-width interval. Scores that
    are all 0 or 1 (rates, e.g. the toy metrics) get the Wilson interval, which stays in [0, 1]."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("no scores to average")
    mean = values.mean().item()
    if bool(((values == 0) | (values == 1)).all()):
        return (mean, *wilson_interval(mean, values.numel(), confidence))
    if values.numel() == 1:
        return mean, mean, mean
    half = z_value(confidence) * values.std(unbiased=True).item() / math.sqrt(values.numel())
    return mean, mean - half, mean + half


def win_outcomes(candidate: torch.Tensor, baseline: torch.Tensor, tie_tolerance: float = 0.0) -> torch.Tensor:
    """Per item (same prompt and seed): 1 if the candidate scores higher, 0.5 for a tie (within
    `tie_tolerance`), 0 if lower."""
    candidate = torch.as_tensor(candidate, dtype=torch.float64).flatten()
    baseline = torch.as_tensor(baseline, dtype=torch.float64).flatten()
    if candidate.shape != baseline.shape:
        raise ValueError(f"win rate needs paired scores: {tuple(candidate.shape)} vs {tuple(baseline.shape)}")
    diff = candidate - baseline
    return torch.where(diff.abs() <= tie_tolerance, 0.5, (diff > 0).double())


def win_rate(candidate: torch.Tensor, baseline: torch.Tensor, confidence: float = 0.95,
             tie_tolerance: float = 0.0) -> tuple[float, float, float]:
    """(win rate, low, high): ties count half; Wilson score interval for the rate."""
    outcomes = win_outcomes(candidate, baseline, tie_tolerance)
    n = outcomes.numel()
    if n == 0:
        raise ValueError("no paired scores")
    p = outcomes.mean().item()
    return (p, *wilson_interval(p, n, confidence))
