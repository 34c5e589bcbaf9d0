"""Aggregate reward scores: clustered intervals, paired differences, win rates, Holm's correction.

Evaluation items are (prompt, seed) pairs with the seeds nested in the prompts (seed s is the
same starting noise for every prompt). Scores of one prompt are correlated (reward means are
mostly prompt-driven), so treating the prompts x seeds images as independent makes intervals too
narrow by the design effect 1 + (m - 1) rho (README.md, Evaluation, "Statistics"). Every
interval here is therefore clustered by prompt: the per-image values are averaged per prompt
first and the interval is a Student t interval over the prompt means,

    mean +- t_{n - 1, (1 + confidence) / 2} * s / sqrt(n),   n = number of prompts,

s the sample standard deviation of the prompt means (n - 1 degrees of freedom). With one seed
per prompt this is the ordinary t interval over the items. The same holds for 0/1 scores (rates)
and win fractions, whose intervals are clamped to [0, 1]; no Wilson interval over images (it
would treat the images as independent). A comparison is the PAIRED difference candidate minus
baseline per (prompt, seed), averaged per prompt, with its own interval and a two-sided t test
over the prompt-mean differences; Holm's step-down adjustment (Holm 1979) corrects the p-values
of a table of such comparisons. All functions are pure and deterministic (the cluster bootstrap
takes an explicit seed) so the arithmetic can be checked by hand.
"""

import math
from statistics import NormalDist

import torch
from t2i_align.errors import InputError


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile: 1.959964 for 0.95."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")


def t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with an integer number `df` >= 1 of degrees of freedom.

    Exact finite series of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df) in
    theta = atan(t / sqrt(df)); no scipy needed. E.g. df = 1: 2 atan(t) / pi; df = 2:
    t / sqrt(2 + t^2)."""
    if df < 1 or int(df) != df:
        raise InputError(f"degrees of freedom must be a positive integer, got {df}")
    t = abs(float(t))
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:  # 1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... + (2*4*...*(df-3))/(3*5*...*(df-2)) c^(df-3)
            total = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    total, term = 1.0, 1.0  # 1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... + (1*3*...*(df-3))/(2*4*...*(df-2)) c^(df-2)
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_value(confidence: float, df: int) -> float:
    """Two-sided Student t quantile with `df` degrees of freedom (12.7062 for 0.95 and df = 1,
    4.3027 for df = 2, 2.7764 for df = 4; tends to z_value): bisection on t_central_mass."""
    _check_confidence(confidence)
    low, high = 0.0, 1.0
    while t_central_mass(high, df) < confidence:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if t_central_mass(mid, df) < confidence:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def _flat(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).flatten()


def cluster_means(values, clusters=None) -> torch.Tensor:
    """Per-cluster (per-prompt) means of `values` [N], clusters in order of first appearance.

    clusters: a label per value (the prompt of each (prompt, seed) item); None = every value is
    its own cluster (one seed per prompt)."""
    values = _flat(values)
    if clusters is None:
        return values
    clusters = list(clusters)
    if len(clusters) != values.numel():
        raise InputError(f"{values.numel()} values but {len(clusters)} cluster labels")
    index = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    ids = torch.tensor([index[c] for c in clusters], dtype=torch.long)
    sums = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids, values)
    counts = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids, torch.ones_like(values))
    return sums / counts


def interval_over_clusters(cluster_values, confidence: float = 0.95,
                           bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval (n - 1 df) over per-cluster values [n].

    One cluster: the interval is undefined (no between-prompt variation to estimate), low and high
    are NaN. bounds: clamp the interval to them, e.g. (0, 1) for rates."""
    values = _flat(cluster_values)
    n = values.numel()
    if n == 0:
        raise InputError("no scores to average")
    mean = values.mean().item()
    if n == 1:
        return mean, math.nan, math.nan
    half = t_value(confidence, n - 1) * values.std(unbiased=True).item() / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return mean, low, high


def is_rate(values) -> bool:
    """True when every value is 0 or 1 (a rate, e.g. the toy metrics)."""
    values = _flat(values)
    return bool(((values == 0) | (values == 1)).all())


def mean_confidence_interval(values, confidence: float = 0.95, clusters=None) -> tuple[float, float, float]:
    """(mean, low, high) of `values` [N] clustered by `clusters` (the prompt of each item; None =
    each value its own prompt): the t interval over the per-prompt means. Scores that are all 0 or
    1 (rates) get the same clustered interval clamped to [0, 1]."""
    values = _flat(values)
    if values.numel() == 0:
        raise InputError("no scores to average")
    bounds = (0.0, 1.0) if is_rate(values) else None
    return interval_over_clusters(cluster_means(values, clusters), confidence, bounds)


def t_test_p_value(cluster_values) -> float:
    """Two-sided p-value of a one-sample t test of mean 0 over per-cluster values [n] (n - 1 df):
    for the paired difference, the prompt-mean differences. NaN with one cluster; with zero
    spread, 1 for a zero mean and 0 otherwise."""
    values = _flat(cluster_values)
    n = values.numel()
    if n < 2:
        return math.nan
    mean, sd = values.mean().item(), values.std(unbiased=True).item()
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return 1.0 - t_central_mass(mean / (sd / math.sqrt(n)), n - 1)


def _paired(candidate, baseline, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    candidate, baseline = _flat(candidate), _flat(baseline)
    if candidate.shape != baseline.shape:
        raise InputError(f"{what} needs paired scores: {tuple(candidate.shape)} vs {tuple(baseline.shape)}")
    if candidate.numel() == 0:
        raise InputError("no paired scores")
    return candidate, baseline


def paired_difference(candidate, baseline, clusters=None,
                      confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(diff, low, high, p): candidate minus baseline per (prompt, seed) item, averaged per prompt,
    t interval over the prompt-mean differences (clamped to [-1, 1] when both are rates) and the
    two-sided paired t test's p-value. Two overlapping per-model intervals are not a test; this
    is (README.md, Evaluation, "Statistics")."""
    candidate, baseline = _paired(candidate, baseline, "a paired difference")
    per_prompt = cluster_means(candidate - baseline, clusters)
    bounds = (-1.0, 1.0) if is_rate(candidate) and is_rate(baseline) else None
    return (*interval_over_clusters(per_prompt, confidence, bounds), t_test_p_value(per_prompt))


def win_outcomes(candidate, baseline, tie_tolerance: float = 0.0) -> torch.Tensor:
    """Per item (same prompt and seed): 1 if the candidate scores higher, 0.5 for a tie (within
    `tie_tolerance`), 0 if lower."""
    candidate, baseline = _paired(candidate, baseline, "win rate")
    diff = candidate - baseline
    return torch.where(diff.abs() <= tie_tolerance, 0.5, (diff > 0).double())


def win_rate(candidate, baseline, confidence: float = 0.95, tie_tolerance: float = 0.0,
             clusters=None) -> tuple[float, float, float]:
    """(win rate, low, high), clustered: the per-prompt win fraction (ties half, as in the
    Diffusion-DPO / MaPO human evals), averaged over prompts, t interval over prompts clamped to
    [0, 1]. clusters: the prompt of each item (None = each item its own prompt)."""
    per_prompt = cluster_means(win_outcomes(candidate, baseline, tie_tolerance), clusters)
    return interval_over_clusters(per_prompt, confidence, bounds=(0.0, 1.0))


def cluster_bootstrap_interval(values, clusters=None, confidence: float = 0.95, n_boot: int = 2000,
                               seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile interval of the mean of prompt means over `n_boot` resamples
    of the prompts with replacement (a cluster bootstrap), from a torch generator
    seeded with `seed` so it is reproducible. An alternative to the t interval (the default) when
    prompt means are far from normal; not used by the tables."""
    _check_confidence(confidence)
    per_prompt = cluster_means(values, clusters)
    n = per_prompt.numel()
    if n == 0:
        raise InputError("no scores to average")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (n_boot, n), generator=generator)
    boot = per_prompt[picks].mean(dim=1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return per_prompt.mean().item(), low, high


def holm_adjust(p_values) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (Holm 1979), in the input order.

    With the m p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value is
    p_adj_(i) = max over j <= i of min(1, (m - j + 1) p_(j)); rejecting where p_adj <= alpha
    controls the family-wise error rate at alpha. NaN p-values (comparisons without a test, e.g.
    one prompt) stay NaN and are not counted in m."""
    p_values = [float(p) for p in p_values]
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(tested, start=1):
        running = max(running, min(1.0, (m - j + 1) * p))
        adjusted[i] = running
    return adjusted
