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
