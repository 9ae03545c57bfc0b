"""HR@K and NDCG@K over full rankings with one relevant item per sample, and the paired bootstrap.

A sample's outcome is the 0-based rank of its target in the ranking (None = not ranked at all, a
miss at every K). HR@K = 1 if rank < K; NDCG@K = 1 / log2(rank + 2) if rank < K, else 0 (with a
single relevant item the ideal DCG is 1). Metrics are means over ALL samples: a sample that failed
to produce a ranking still counts, as a miss.

Pure math (numpy only inside the bootstrap), at the bottom layer: the evaluation, the classic
baselines' early stopping, comparisons and model cards all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DEFAULT_KS = (1, 5, 10, 20, 50)


def target_rank(ranked_ids: Sequence[int], target: int) -> int | None:
    """0-based position of `target` in `ranked_ids`, None if absent."""
    for position, item_id in enumerate(ranked_ids):
        if item_id == target:
            return position
    return None


def sample_metrics(rank: int | None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Per-sample HR@K / NDCG@K (the unit of the paired bootstrap)."""
    out: dict[str, float] = {}
    for k in ks:
        hit = rank is not None and rank < k
        out[f"HR@{k}"] = 1.0 if hit else 0.0
        out[f"NDCG@{k}"] = 1.0 / math.log2(rank + 2) if hit else 0.0
    return out


def aggregate(ranks: Sequence[int | None], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Means over all samples, keys HR@K, NDCG@K and n."""
    if not ranks:
        raise ValueError("no samples to evaluate")
    totals: dict[str, float] = {}
    for rank in ranks:
        for name, value in sample_metrics(rank, ks).items():
            totals[name] = totals.get(name, 0.0) + value
    metrics = {name: total / len(ranks) for name, total in totals.items()}
    ordered = {f"HR@{k}": metrics[f"HR@{k}"] for k in ks}
    ordered.update({f"NDCG@{k}": metrics[f"NDCG@{k}"] for k in ks})
    ordered["n"] = len(ranks)
    return ordered


def metric_matrix(ranks: Sequence[int | None], ks: Sequence[int]) -> tuple[list[str], Any]:
    import numpy as np

    rows = [sample_metrics(rank, ks) for rank in ranks]
    names = list(rows[0])
    return names, np.array([[row[name] for name in names] for row in rows], dtype=np.float64)


def paired_bootstrap(a: Any, b: Any, *, resamples: int = 10_000, seed: int = 0,
                     chunk: int = 1000) -> tuple[Any, Any, Any, Any]:
    """Per column of [n, m] arrays: mean diff, 2.5% and 97.5% bounds, two-sided p-value."""
    import numpy as np

    diffs = b - a
    n = diffs.shape[0]
    observed = diffs.mean(axis=0)
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, diffs.shape[1]))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(size, n))
        means[start : start + size] = diffs[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    extreme = np.abs(means - observed) >= np.abs(observed) - 1e-12
    p_value = (extreme.sum(axis=0) + 1) / (resamples + 1)
    return observed, low, high, p_value


def stratified_mean_gain(strata: Sequence[tuple[Any, Any]], *, resamples: int = 10_000, seed: int = 0,
                         chunk: int = 1000) -> tuple[float, float, float, int]:
    """The mean relative gain (%) of `b` over `a` across strata (datasets) and columns (metrics), with
    its 95% interval: each stratum's [n, m] arrays resampled on their own (a stratified paired
    bootstrap) and every gain recomputed over the resample's own mean of `a`, so the baseline's
    uncertainty is in the interval too (at a baseline of ~15 hits in 1000 that widens it by half
    against holding the baseline fixed). Columns where `a` scored 0 are left out (no gain defined), as
    are the rare resamples where such a column's baseline draws 0. Returns (mean, low, high, terms).
    This is the paper's averaged gain with the test samples' uncertainty attached; no statistics
    library in the dependencies bootstraps a stratified mean of ratios."""
    import numpy as np

    rng = np.random.default_rng(seed)
    totals, defined, observed, terms = np.zeros(resamples), np.ones(resamples, dtype=bool), 0.0, 0
    for a, b in strata:
        keep = a.mean(axis=0) > 0
        a, b = a[:, keep], b[:, keep]
        terms += int(keep.sum())
        observed += float(((b.mean(axis=0) - a.mean(axis=0)) / a.mean(axis=0)).sum())
        for start in range(0, resamples, chunk):
            size = min(chunk, resamples - start)
            index = rng.integers(0, a.shape[0], size=(size, a.shape[0]))
            base, value = a[index].mean(axis=1), b[index].mean(axis=1)
            zero = (base == 0).any(axis=1)
            defined[start : start + size] &= ~zero
            totals[start : start + size] += ((value - base) / np.where(base == 0, 1.0, base)).sum(axis=1)
    if not terms:
        raise ValueError("no column with a non-zero baseline: no relative gain is defined")
    low, high = np.percentile(100 * totals[defined] / terms, [2.5, 97.5])
    return 100 * observed / terms, float(low), float(high), terms


def paired_sensitivity(a: Any, b: Any, *, gain: float, power: float = 0.8,
                       level: float = 0.95) -> tuple[Any, Any]:
    """What a paired test on these samples can see, per column of [n, m] arrays (`a` the baseline):
    (detectable, chance). `detectable`: the smallest relative gain over `a`'s mean (0.5 = +50%) that a
    two-sided paired test at `level` finds with probability `power`; `chance`: the probability that it
    finds a relative gain of `gain`. A normal approximation of the paired bootstrap that takes the
    spread of the observed per-sample differences b - a as the spread under the alternative, so it
    reflects how strongly the two methods' hits coincide. NaN where `a` scored 0 or b - a never varies
    (nothing to scale from). No statistics library in the dependencies does paired power analysis."""
    import numpy as np

    z_level = _normal_quantile(1 - (1 - level) / 2)
    diffs = b - a
    base = a.mean(axis=0)
    spread = diffs.std(axis=0, ddof=1) / math.sqrt(diffs.shape[0])
    known = (base > 0) & (spread > 0)
    detectable = np.full(base.shape, np.nan)
    chance = np.full(base.shape, np.nan)
    shift = gain * base[known] / spread[known]
    detectable[known] = (z_level + _normal_quantile(power)) * spread[known] / base[known]
    chance[known] = [_normal_cdf(s - z_level) + _normal_cdf(-s - z_level) for s in shift]
    return detectable, chance


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)
