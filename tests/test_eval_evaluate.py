"""evaluate_model end to end on the tiny model: predictions, grounding modes, batching, exclusion."""

from __future__ import annotations

import pytest

from softrec.config import EvalConfig
from softrec.evaluation.evaluate import evaluate_model
from softrec.inference import grounding

KEYS = [f"HR@{k}" for k in (1, 5, 10, 20, 50)] + [f"NDCG@{k}" for k in (1, 5, 10, 20, 50)] + ["validity", "n"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(grounding, "_MEMORY", {})


def _evaluate(backbone, dataset, **settings):
    model, tokenizer = backbone
    config = EvalConfig(**{"num_beams": 2, "max_new_tokens": 6, **settings})
    samples = dataset.split("test")
    return samples, evaluate_model(model, tokenizer, dataset, samples, config, base_model_name="tiny", progress=False)


def test_l2_predictions_are_complete_and_consistent(tiny_backbone, tiny_dataset):
    samples, result = _evaluate(tiny_backbone, tiny_dataset, top_n=10)
    assert list(result.metrics) == KEYS and result.metrics["n"] == len(samples)
    assert [p["sample_id"] for p in result.predictions] == [s.sample_id for s in samples]
    for sample, p in zip(samples, result.predictions, strict=True):
        assert p["target"] == sample.target and len(p["ranked"]) == 10
        assert set(p) >= {"sample_id", "target", "ranked", "target_rank", "generated"}
        if p["target_rank"] is not None and p["target_rank"] < 10:
            assert p["ranked"][p["target_rank"]] == sample.target
        else:
            assert sample.target not in p["ranked"]
    # a full ranking always contains the target: no misses without exclusion
    assert all(p["target_rank"] is not None for p in result.predictions)
    assert result.metrics["HR@50"] == 1.0  # 30 items < 50


def test_batching_does_not_change_rankings(tiny_backbone, tiny_dataset):
    _, one = _evaluate(tiny_backbone, tiny_dataset, batch_size=1)
    _, many = _evaluate(tiny_backbone, tiny_dataset, batch_size=8)
    assert [p["ranked"] for p in one.predictions] == [p["ranked"] for p in many.predictions]
    assert one.metrics == many.metrics


def test_trie_grounding_puts_beam_items_first(tiny_backbone, tiny_dataset):
    _, result = _evaluate(tiny_backbone, tiny_dataset, grounding="trie", max_new_tokens=24, num_beams=3)
    titles = tiny_dataset.titles
    assert result.metrics["validity"] == 1.0
    for p in result.predictions:
        assert p["generated"] == f'"{titles[p["ranked"][0]]}"'
        assert sorted(p["ranked"]) == list(range(len(titles)))  # a full ranking, no repeats


def test_history_exclusion_removes_history_items(tiny_backbone, tiny_dataset):
    samples, result = _evaluate(tiny_backbone, tiny_dataset, exclude_history=True)
    for sample, p in zip(samples, result.predictions, strict=True):
        assert not set(sample.history) & set(p["ranked"])
        assert len(p["ranked"]) == len(tiny_dataset.titles) - len(set(sample.history))


def test_prompt_fn_overrides_the_prompt(tiny_backbone, tiny_dataset):
    from softrec.baselines.icl import icl_prompt_fn

    seen = []
    prompt_fn = icl_prompt_fn(tiny_dataset, 2, seed=1)

    def spy(sample):
        seen.append(prompt_fn(sample))
        return seen[-1]

    model, tokenizer = tiny_backbone
    evaluate_model(model, tokenizer, tiny_dataset, tiny_dataset.split("test")[:2], EvalConfig(num_beams=1, max_new_tokens=2),
                   prompt_fn=spy, progress=False)
    assert len(seen) == 2
    assert seen[0].count("### Example") == 2 and seen[0].endswith("### Response:\n")
    assert icl_prompt_fn(tiny_dataset, 2, seed=1)(tiny_dataset.split("test")[0]) == seen[0]  # seeded draw
