"""Constrained beam search side by side: softrec's decoder vs `generate(prefix_allowed_tokens_fn)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from softrec.bench.timing import stopwatch

Log = Callable[[str], None]


def ranked_items(trie: Any, beams: Sequence[Any]) -> list[list[int]]:
    """Per prompt, the items of its complete beams in beam order (what trie grounding ranks)."""
    out = []
    for b in beams:
        seen: list[int] = []
        for ids in b.token_ids:
            seen += [i for i in trie.items_for(ids) if i not in seen]
        out.append(seen)
    return out


@dataclass
class DecodingComparison:
    seconds: dict[str, list[float]]  # decoder -> seconds per batch
    sizes: list[int]  # prompts per batch
    beams: dict[str, list[Any]]  # decoder -> Beams per prompt, input order
    identical: int  # prompts whose ranked items agree
    identical_tokens: int  # prompts whose beams' tokens agree
    valid: int  # softrec beams that are complete catalogue titles
    total: int

    def rates(self, name: str) -> list[float]:
        return [n / s for n, s in zip(self.sizes, self.seconds[name], strict=True)]

    def rate(self, name: str) -> float:
        return sum(self.sizes) / sum(self.seconds[name])


def compare_decoding(model: Any, tokenizer: Any, prompts: Sequence[str], trie: Any, dict_trie: Any, *,
                     num_beams: int, max_new_tokens: int, batch_size: int, log: Log = print) -> DecodingComparison:
    """softrec's constrained decoder vs `generate(prefix_allowed_tokens_fn)`, taking turns batch by
    batch (alternating which goes first) over the same length-sorted batches."""
    from softrec.inference.generate import generate_baseline, generate_beam_ids

    settings = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size)
    warm = {**settings, "max_new_tokens": 2}  # allocator and kernels, not timed
    generate_beam_ids(model, tokenizer, prompts[:1], **warm, constrain_to=trie)
    generate_baseline(model, tokenizer, prompts[:1], **warm, trie=dict_trie)
    runs = {
        "softrec": lambda batch: generate_beam_ids(model, tokenizer, batch, **settings, constrain_to=trie),
        "baseline": lambda batch: generate_baseline(model, tokenizer, batch, **settings, trie=dict_trie),
    }
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))  # as generate_beam_ids batches
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    beams: dict[str, list[Any]] = {name: [None] * len(prompts) for name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for number, indices in enumerate(batches):
        batch = [prompts[i] for i in indices]
        for name in (("softrec", "baseline") if number % 2 == 0 else ("baseline", "softrec")):
            with stopwatch() as t:
                out = runs[name](batch)
            for index, b in zip(indices, out, strict=True):
                beams[name][index] = b
            seconds[name].append(t[0])
            log(f"  batch {number + 1}/{len(batches)} {name:8s} {t[0]:7.1f}s")
    fast, slow = beams["softrec"], beams["baseline"]
    same = sum(a == b for a, b in zip(ranked_items(trie, fast), ranked_items(trie, slow), strict=True))
    same_tokens = sum(a.token_ids == b.token_ids for a, b in zip(fast, slow, strict=True))
    valid = sum(bool(trie.items_for(ids)) for b in fast for ids in b.token_ids)
    total = sum(len(b.token_ids) for b in fast)
    # seconds per decoder are in batch order whichever went first
    return DecodingComparison(seconds, [len(b) for b in batches], beams, same, same_tokens, valid, total)

