"""Evaluation: prompts -> beam search -> grounding -> full ranking -> per-sample rank -> metrics.

Sharding: when torch.distributed is initialised, rank r evaluates samples[r::world] (no sample
dropped, none duplicated), the per-sample results are gathered with `all_gather_object` and put
back in sample order, and every rank returns the full result. The metrics are computed from the
gathered predictions only, so they equal a single-process run's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from softrec.config import EvalConfig
from softrec.data.dataset import PreparedDataset, Sample
from softrec.data.prompts import end_token_id, sample_prompt, strip_response
from softrec.inference import grounding
from softrec.inference.generate import generate_beam_ids
from softrec.inference.trie import TitleTrie
from softrec.metrics import aggregate, target_rank


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "HR@1".."HR@50", "NDCG@1".."NDCG@50", "validity", "n"
    predictions: list[dict]  # sample_id, target, ranked (top_n ids), target_rank, generated, valid[, decode_steps]


@dataclass
class Ranked:
    """One sample's outcome before metrics: the full ranking and the top beam's text."""

    ranking: list[int]
    generated: str
    valid: bool
    decode_steps: int | None = None  # the prompt's beam-search steps (what its generation cost)


def _frozen_base_vectors(model: Any, tokenizer: Any, dataset: PreparedDataset, queries: list[str],
                         cache_key: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Catalogue and query embeddings from the model's frozen base (BIGRec's L2 grounding)."""
    return (grounding.catalogue_embeddings(model, tokenizer, dataset, cache_key=cache_key),
            grounding.embed_texts(model, tokenizer, queries))


def _minilm_vectors(model: Any, tokenizer: Any, dataset: PreparedDataset, queries: list[str],
                    cache_key: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return grounding.minilm_catalogue(dataset), grounding.minilm_embed(queries)


@dataclass(frozen=True)
class Grounder:
    """How one eval.grounding choice maps generations to catalogue items."""

    vectors: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (catalogue, query) embeddings, ranked by L2
    constrained: bool = False  # decode inside the catalogue title trie; its items rank first


# eval.grounding (softrec.config.GROUNDINGS) -> how it grounds
GROUNDERS: dict[str, Grounder] = {
    "l2": Grounder(_frozen_base_vectors),
    "trie": Grounder(_frozen_base_vectors, constrained=True),
    "minilm": Grounder(_minilm_vectors),
}

_TRIES: dict[tuple[int, str, str], TitleTrie] = {}


def title_trie(tokenizer: Any, titles: Sequence[str], template: str = "alpaca") -> TitleTrie:
    """The catalogue trie, built once per (tokenizer, catalogue, template) in this process."""
    key = (id(tokenizer), grounding.titles_checksum(titles), template)
    if key not in _TRIES:
        _TRIES[key] = TitleTrie.from_titles(tokenizer, titles, end_token_id(tokenizer, template))
    return _TRIES[key]


def _apply_exclusion(ranking: list[int], sample: Sample, exclude_history: bool) -> list[int]:
    if not exclude_history or not sample.history:
        return ranking
    history = set(sample.history)
    return [item for item in ranking if item not in history]


def rank_samples(
    model: Any,
    tokenizer: Any,
    dataset: PreparedDataset,
    samples: Sequence[Sample],
    eval_config: EvalConfig,
    *,
    template: str = "alpaca",
    base_model_name: str | None = None,
    prompt_fn: Callable[[Sample], str] | None = None,
    progress: bool = False,
    grounding_model: Any | None = None,
) -> list[Ranked]:
    """Generate and ground `samples` in this process (no sharding). See the grounding module."""
    if not samples:
        return []
    grounder = GROUNDERS[eval_config.grounding]
    prompts = [prompt_fn(s) if prompt_fn else sample_prompt(dataset, s, template, tokenizer) for s in samples]
    trie = title_trie(tokenizer, dataset.titles, template) if grounder.constrained else None
    beams = generate_beam_ids(
        model, tokenizer, prompts, num_beams=eval_config.num_beams,
        max_new_tokens=eval_config.max_new_tokens, length_penalty=eval_config.length_penalty,
        batch_size=eval_config.batch_size, constrain_to=trie, progress=progress, dtype=eval_config.dtype,
    )
    generated = [b.texts[0] if b.texts else "" for b in beams]
    # an empty query would be a zero-length input; a blank is a neutral stand-in
    rule = eval_config.response_rule
    queries = [strip_response(text, rule) or " " for text in generated]
    embedder = grounding_model if grounding_model is not None else model
    item_vectors, query_vectors = grounder.vectors(embedder, tokenizer, dataset, queries, base_model_name)
    by_distance = grounding.rank_by_distance(query_vectors, item_vectors).tolist()
    titles = set(dataset.titles)
    out = []
    for sample, beam, text, ranking in zip(samples, beams, generated, by_distance, strict=True):
        if trie is not None:
            head = [item for ids in beam.token_ids for item in trie.items_for(ids)]
            ranking = grounding.merge_rankings(head, ranking)
        ranking = _apply_exclusion(ranking, sample, eval_config.exclude_history)
        out.append(Ranked(ranking, text, strip_response(text, rule) in titles, beam.steps))
    return out


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(local: list[tuple[int, dict]], world: int, n: int) -> list[dict]:
    """All ranks' (index, prediction) pairs, in sample order; every index exactly once."""
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, local)
        local = [pair for part in parts for pair in part]
    local.sort(key=lambda pair: pair[0])
    if [index for index, _ in local] != list(range(n)):
        raise RuntimeError(f"sharded evaluation lost or duplicated samples: got {len(local)} of {n}")
    return [prediction for _, prediction in local]


def prediction_row(sample: Sample, ranked: Ranked, top_n: int) -> dict:
    row = {
        "sample_id": sample.sample_id,
        "target": sample.target,
        "ranked": ranked.ranking[:top_n],
        "target_rank": target_rank(ranked.ranking, sample.target),
        "generated": ranked.generated,
        "valid": ranked.valid,
    }
    if ranked.decode_steps is not None:
        row["decode_steps"] = ranked.decode_steps
    return row


def mean_decode_steps(predictions: Sequence[dict]) -> float | None:
    """The mean beam-search steps per prompt (what prices generation), None without LLM decoding."""
    steps = [p["decode_steps"] for p in predictions if "decode_steps" in p]
    return sum(steps) / len(steps) if steps else None


def summarize(predictions: Sequence[dict], ks: Sequence[int]) -> dict[str, float]:
    """metrics.aggregate over target ranks, plus validity (share of valid top-beam generations)."""
    metrics = aggregate([p["target_rank"] for p in predictions], ks)
    n = metrics.pop("n")
    metrics["validity"] = sum(bool(p["valid"]) for p in predictions) / n
    metrics["n"] = n
    return metrics


def evaluate_model(
    model: Any,
    tokenizer: Any,
    dataset: PreparedDataset,
    samples: Sequence[Sample],
    eval_config: EvalConfig,
    *,
    template: str = "alpaca",
    base_model_name: str | None = None,
    prompt_fn: Callable[[Sample], str] | None = None,
    progress: bool = True,
    grounding_model: Any | None = None,
) -> EvalResult:
    """Full-ranking evaluation of an LLM recommender (contract in ../shared contracts).

    `grounding_model` embeds for l2/trie grounding instead of `model`'s frozen base (a fully
    fine-tuned model has no adapter to switch off, so the caller passes the untuned base).
    """
    rank, world = _distributed()
    indices = list(range(rank, len(samples), world))
    mine = [samples[i] for i in indices]
    ranked = rank_samples(
        model, tokenizer, dataset, mine, eval_config, template=template,
        base_model_name=base_model_name, prompt_fn=prompt_fn, progress=progress and rank == 0,
        grounding_model=grounding_model,
    )
    local = [(i, prediction_row(s, r, eval_config.top_n)) for i, s, r in zip(indices, mine, ranked, strict=True)]
    predictions = _gather(local, world, len(samples))
    return EvalResult(summarize(predictions, eval_config.ks), predictions)


def evaluate_scores(
    scores: torch.Tensor, samples: Sequence[Sample], eval_config: EvalConfig
) -> EvalResult:
    """Metrics for a scoring recommender (SASRec, GRU4Rec): scores [n, n_items], higher is better.

    Ties are broken by item id; validity is 1 by construction (every ranked entry is an item).
    """
    order = torch.sort(-scores.float(), dim=1, stable=True).indices.tolist()
    predictions = []
    for sample, ranking in zip(samples, order, strict=True):
        ranking = _apply_exclusion(ranking, sample, eval_config.exclude_history)
        predictions.append(prediction_row(sample, Ranked(ranking, "", True), eval_config.top_n))
    return EvalResult(summarize(predictions, eval_config.ks), predictions)
