"""Prompt templates (SOFT.md section 3): the reference Alpaca prompt and a chat-template variant.

The model must generate `response_text(title)`, i.e. the quoted title; training appends EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from softrec.data.dataset import Domain

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context.\nWrite a response that appropriately completes the request.\n\n"
)


def instruction(domain: Domain) -> str:
    return (
        f"Given a list of {domain.items} the user has {domain.verb} before, please recommend a new "
        f"{domain.item} that the user likes to the user."
    )


def history_text(titles: Sequence[str], domain: Domain, item_suffix: str = "") -> str:
    """`item_suffix` follows each title (LLaRA puts its item placeholder token there)."""
    quoted = ", ".join(f'"{title}"{item_suffix}' for title in titles)
    return f"The user has {domain.verb} the following {domain.items} before: {quoted}"


def response_text(title: str) -> str:
    return f'"{title}"'


def strip_response(text: str) -> str:
    """Generated text -> title: first line, surrounding whitespace and quotes removed."""
    text = text.strip().split("\n", 1)[0].strip()
    if len(text) >= 2 and text[0] == '"' and text.endswith('"'):
        return text[1:-1].strip()
    return text.strip('"').strip()


def build_prompt(
    titles: Sequence[str],
    domain: Domain,
    template: str = "alpaca",
    tokenizer: Any | None = None,
    item_suffix: str = "",
) -> str:
    """The text the model reads; the response starts right after it."""
    task = instruction(domain)
    context = history_text(titles, domain, item_suffix)
    if template == "alpaca":
        return (
            f"{ALPACA_HEADER}### Instruction:\n{task}\n\n### Input:\n{context}\n\n### Response:\n"
        )
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the chat template needs a tokenizer that has a chat_template")
        messages = [{"role": "user", "content": f"{task}\n\n{context}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt template '{template}': expected alpaca or chat")
