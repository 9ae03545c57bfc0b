"""HR@K and NDCG@K over full rankings with one relevant item per sample.

A sample's outcome is the 0-based rank of its target in the ranking (None = not ranked at all, a
miss at every K). HR@K = 1 if rank < K; NDCG@K = 1 / log2(rank + 2) if rank < K, else 0 (with a
single relevant item the ideal DCG is 1). Metrics are means over ALL samples: a sample that failed
to produce a ranking still counts, as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
