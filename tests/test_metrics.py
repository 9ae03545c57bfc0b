"""HR@K / NDCG@K against hand-computed cases, tie-breaking in rankings, validity."""

from __future__ import annotations

import math

import pytest
import torch

from softrec.config import EvalConfig
from softrec.data.dataset import Sample
from softrec.evaluation.evaluate import evaluate_scores, summarize
from softrec.inference.grounding import rank_by_distance
from softrec.metrics import aggregate, sample_metrics, target_rank


def test_rank_zero_is_a_hit_everywhere():
    m = sample_metrics(0)
    assert all(m[f"HR@{k}"] == 1.0 for k in (1, 5, 10, 20, 50))
    assert all(m[f"NDCG@{k}"] == 1.0 for k in (1, 5, 10, 20, 50))


def test_rank_k_minus_one_hits_at_k_and_rank_k_misses():
    at_9 = sample_metrics(9)  # the 10th position
    assert at_9["HR@10"] == 1.0 and at_9["HR@5"] == 0.0
    assert at_9["NDCG@10"] == pytest.approx(1 / math.log2(11))
    at_10 = sample_metrics(10)  # the 11th position
    assert at_10["HR@10"] == 0.0 and at_10["NDCG@10"] == 0.0
    assert at_10["HR@20"] == 1.0 and at_10["NDCG@20"] == pytest.approx(1 / math.log2(12))
    at_49 = sample_metrics(49)
    assert at_49["HR@50"] == 1.0 and sample_metrics(50)["HR@50"] == 0.0


def test_miss_counts_as_zero_and_is_averaged_over_all_samples():
    assert set(sample_metrics(None).values()) == {0.0}
    metrics = aggregate([0, 9, 10, None])
    assert metrics["n"] == 4
    assert metrics["HR@1"] == 0.25
    assert metrics["HR@10"] == 0.5
    assert metrics["HR@20"] == 0.75
    assert metrics["NDCG@10"] == pytest.approx((1 + 1 / math.log2(11)) / 4)
    assert metrics["NDCG@20"] == pytest.approx((1 + 1 / math.log2(11) + 1 / math.log2(12)) / 4)


def test_target_rank():
    assert target_rank([5, 3, 7], 7) == 2
    assert target_rank([5, 3, 7], 4) is None


def test_l2_ties_are_broken_by_item_id():
    items = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    query = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    ranking = rank_by_distance(query, items).tolist()
    # query 0: items 1 and 4 at distance 0, then 0, 2, 3 at distance 1 (all by id)
    assert ranking[0] == [1, 4, 0, 2, 3]
    # query 1: items 0 and 2 at 0, then 1 and 4 at 1, then 3 at sqrt(2)
    assert ranking[1] == [0, 2, 1, 4, 3]


def test_score_ties_are_broken_by_item_id_and_history_can_be_excluded():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    sample = Sample("s0", "u", (1,), 2)
    result = evaluate_scores(scores, [sample], EvalConfig(top_n=5))
    assert result.predictions[0]["ranked"] == [1, 3, 0, 2, 4]
    assert result.predictions[0]["target_rank"] == 3
    excluded = evaluate_scores(scores, [sample], EvalConfig(top_n=5, exclude_history=True))
    assert excluded.predictions[0]["ranked"] == [3, 0, 2, 4]
    assert excluded.predictions[0]["target_rank"] == 2
    assert excluded.metrics["HR@5"] == 1.0 and excluded.metrics["HR@1"] == 0.0


def test_summarize_adds_validity():
    predictions = [{"target_rank": 0, "valid": True}, {"target_rank": None, "valid": False}]
    metrics = summarize(predictions, [1, 5, 10, 20, 50])
    assert metrics["validity"] == 0.5 and metrics["HR@1"] == 0.5 and metrics["n"] == 2
    assert list(metrics)[:2] == ["HR@1", "HR@5"] and list(metrics)[-2:] == ["validity", "n"]


def _paired_hits(rng, n: int):
    """HR-like paired outcomes: baseline 0.05, the other method +37.6% (0.0688), mostly the same hits."""
    u = rng.random(n)
    a = (u < 0.05).astype(float)
    b = ((u < 0.04) | ((u >= 0.05) & (u < 0.0788))).astype(float)
    return a[:, None], b[:, None]


def test_paired_sensitivity_matches_the_simulated_power_of_the_paired_bootstrap():
    import numpy as np

    from softrec.metrics import paired_bootstrap, paired_sensitivity

    rng = np.random.default_rng(7)
    found, predicted = [], []
    for _ in range(200):
        a, b = _paired_hits(rng, 1000)
        _, low, high, _ = paired_bootstrap(a, b, resamples=400, seed=int(rng.integers(1 << 30)))
        found.append(low[0] > 0 or high[0] < 0)
        predicted.append(paired_sensitivity(a, b, gain=0.376)[1][0])
    assert abs(np.mean(found) - np.mean(predicted)) < 0.1, (np.mean(found), np.mean(predicted))
    assert 0.4 < np.mean(found) < 0.95  # a case where power is neither trivial nor hopeless


def test_paired_sensitivity_scales_with_samples_and_is_undefined_without_spread():
    import numpy as np

    from softrec.metrics import paired_sensitivity

    a, b = _paired_hits(np.random.default_rng(0), 4000)
    small = paired_sensitivity(a[:1000], b[:1000], gain=0.376)
    large = paired_sensitivity(a, b, gain=0.376)
    assert large[0][0] < small[0][0] and large[1][0] > small[1][0]
    # a 4x larger sample halves the detectable gain (up to the sample's own rates)
    assert 0.35 < large[0][0] / small[0][0] < 0.65
    same = paired_sensitivity(a, a, gain=0.376)
    zero = paired_sensitivity(np.zeros_like(a), b, gain=0.376)
    assert np.isnan(same[0][0]) and np.isnan(same[1][0]) and np.isnan(zero[0][0])
