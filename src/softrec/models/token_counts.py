"""How many tokens a dataset's prompts and titles take, as the backbone's tokenizer counts them (from
characters where that tokenizer is not on disk yet: the preflight must never start a conversion or a
download to count): what the preflight and the suites' time plans price."""

from __future__ import annotations

import functools
import math
from typing import Any

TIME_PROBE = 256  # samples whose token counts price the time (memory: the longest of the first 64)


def prompt_tokens(dataset: Any, config: Any, probe: int = 64, *, mean: bool = False) -> int:
    """Prompt + response length in tokens of the first `probe` samples (`sample_lengths`): the longest
    (memory: a batch pads to it) or their mean (time)."""
    lengths = sample_lengths(dataset, config, probe)
    return int(sum(lengths) / len(lengths)) + 1 if mean else max(lengths)


def sample_lengths(dataset: Any, config: Any, probe: int = 64, *, samples: list[Any] | None = None,
                   responses: dict[str, str] | None = None) -> list[int]:
    """Prompt + response tokens of the first `probe` training samples (test samples when there are
    none; or of `samples`), capped at model.max_length: counted with the backbone's tokenizer when it
    loads without a conversion or the network, else estimated as ~3.5 characters a token plus the
    template. Product titles are denser than that: amazon-industrial's prompts are 241 real tokens
    against ~206 estimated. `responses`: sample id -> the response trained on (SOFT's distilled
    text, verbatim) in place of the quoted target title."""
    if samples is None:
        samples = dataset.split("train")[:probe] or dataset.split("test")[:probe]
    if not samples:
        return [1]
    from softrec.data.prompts import response_text

    answers = [responses[s.sample_id] if responses is not None else response_text(dataset.titles[s.target])
               for s in samples]
    tokenizer = _tokenizer(config.model.name)
    if tokenizer is not None:
        from softrec.data.prompts import sample_prompt

        texts = [sample_prompt(dataset, s, config.model.template, tokenizer) + answer
                 for s, answer in zip(samples, answers, strict=True)]
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    else:
        titles = dataset.titles
        template = 300  # instruction and response scaffolding of the alpaca template, in characters
        lengths = [int((sum(len(titles[i]) + 4 for i in s.history) + len(answer) + template) / 3.5) + 1
                   for s, answer in zip(samples, answers, strict=True)]
    return [min(config.model.max_length, n) for n in lengths]


MEMORY_PROBE = 4096  # training samples whose longest prompt + response prices memory (~1 s to tokenize)


def longest_training_tokens(dataset: Any, config: Any, distilled: dict[str, str] | None = None) -> int:
    """The longest prompt + response among the samples the run trains on, what memory is priced at:
    a micro-batch pads to its longest, and the run meets every sample. A SOFT row carries both targets,
    so its distilled text counts too: as given, else (not distilled yet) up to soft.distill_max_new_tokens
    tokens. The first 64 samples priced a cpu-medium amazon-industrial SOFT run at 475 tokens against
    a true 570 (reached by a real target; its distilled ones add 1), one cause of a 10.7 GiB estimate
    against ~15-16.7 GiB RSS."""
    from softrec.data.subsets import training_samples
    from softrec.methods import is_soft

    samples = training_samples(dataset, config)[:MEMORY_PROBE] or dataset.split("test")[:64]
    longest = max(sample_lengths(dataset, config, samples=samples))
    if is_soft(config.train.method):
        if distilled:
            known = [s for s in samples if s.sample_id in distilled]
            longest = max(longest, *sample_lengths(dataset, config, samples=known, responses=distilled))
        else:
            empty = {s.sample_id: "" for s in samples}
            longest = max(longest, max(sample_lengths(dataset, config, samples=samples, responses=empty))
                          + config.soft.distill_max_new_tokens)
    return min(config.model.max_length, longest)


def title_tokens(dataset: Any, config: Any, probe: int = 512) -> float:
    """Mean tokens of a catalogue title (the grounding embeds every title once), as `sample_lengths` counts."""
    titles = dataset.titles[:probe] or [""]
    tokenizer = _tokenizer(config.model.name)
    if tokenizer is None:
        return sum(len(t) / 3.5 + 1 for t in titles) / len(titles)
    return sum(len(ids) for ids in tokenizer(list(titles))["input_ids"]) / len(titles)


def expected_longest(lengths: list[int], group: int) -> float:
    """The mean length of the longest of `group` samples drawn at random (without replacement) from
    `lengths`: what a micro-batch in random order pads to, so what training computes per sample.
    Exact: the i-th smallest of n is the longest of the group with probability C(i-1, g-1) / C(n, g)."""
    ordered, n = sorted(lengths), len(lengths)
    group = max(1, min(group, n))
    total = math.comb(n, group)
    return sum(v * math.comb(i, group - 1) for i, v in enumerate(ordered) if i >= group - 1) / total


@functools.cache
def _tokenizer(name: str) -> Any | None:
    """Loaded once per process (Gemma's takes ~3 s); read-only here."""
    from softrec.models.registry import cached_tokenizer

    return cached_tokenizer(name)
