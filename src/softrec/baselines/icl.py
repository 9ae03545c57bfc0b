"""Guidance-only baseline (the paper's guidance-only baselines): in-context learning with the untuned LLM.

K demonstrations are drawn once, seeded, from the train split and placed before the query in the
same Alpaca prompt the tuned models read; K = 0 is exactly the zero-shot reference prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from softrec.data.dataset import PreparedDataset, Sample
from softrec.data.prompts import (
    ALPACA_HEADER,
    INPUT_END,
    build_prompt,
    history_text,
    instruction,
    response_text,
)
from softrec.errors import UserError


def demonstrations(dataset: PreparedDataset, shots: int, seed: int = 42) -> list[Sample]:
    train = dataset.split("train")
    if shots > len(train):
        raise UserError(f"--shots {shots}: the train split has only {len(train)} samples")
    return random.Random(seed).sample(train, shots)


def icl_prompt_fn(
    dataset: PreparedDataset,
    shots: int,
    *,
    seed: int = 42,
    template: str = "alpaca",
    tokenizer: Any | None = None,
) -> Callable[[Sample], str]:
    """A `prompt_fn` for `evaluate_model`: the query prompt preceded by `shots` solved examples."""
    if shots < 0:
        raise UserError(f"--shots {shots}: expected 0 or more demonstrations")
    titles, domain = dataset.titles, dataset.domain
    demos = demonstrations(dataset, shots, seed)
    examples = "".join(
        f"### Example {k}:\n{history_text([titles[i] for i in d.history], domain)}\n"
        f"Recommendation: {response_text(titles[d.target])}\n\n"
        for k, d in enumerate(demos, 1)
    )

    def prompt(sample: Sample) -> str:
        history = [titles[i] for i in sample.history]
        if not demos:
            return build_prompt(history, domain, template, tokenizer)
        query = history_text(history, domain)
        if template == "alpaca":
            return (
                f"{ALPACA_HEADER}### Instruction:\n{instruction(domain)}\n\n{examples}"
                f"### Input:\n{query}{INPUT_END}\n\n### Response:\n"
            )
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(f"template '{template}': needs a tokenizer with a chat template")
        content = f"{instruction(domain)}\n\n{examples}{query}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    return prompt
