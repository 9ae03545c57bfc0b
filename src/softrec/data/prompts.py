"""Prompt templates (the reference's train.py / process.py): the reference Alpaca prompt and a chat-template variant.

`alpaca` is byte for byte the reference TRAINING text (Self-Optimized-Fine-Tuning@69d5a85 train.py
`generate_prompt` lines 302-311 with process.py `construct_instruction` lines 84-95): one space after
"context." and after "request.", and the input (history) ends with "\n ". The reference's inference
scripts use two spaces after "request."; softrec reads the training text at inference too (see
docs/fidelity.md). The model must generate `response_text(title)`, i.e. the quoted title; training
appends the end token (EOS). `softrec data prompt` prints the exact training text of a sample.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from softrec.data.dataset import Domain

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request. \n\n"
)
# The reference input field is the history followed by "\n " (process.py line 93).
INPUT_END = "\n "


def instruction(domain: Domain) -> str:
    return (
        f"Given a list of {domain.items} the user has {domain.verb} before, please recommend a new "
        f"{domain.item} that the user likes to the user."
    )


# A tokenizer carrying LLaRA item tokens (models/llara.py) has this attribute: the token format
ITEM_TOKEN_ATTR = "softrec_item_token"


def item_suffixes(tokenizer: Any, item_ids: Sequence[int] | None) -> list[str] | str:
    """Per history title, a space and the item's placeholder token when the tokenizer has them
    (LLaRA: `"Title" [HistoryEmb]`, reference inference_llara.py line 42), else ''."""
    token = getattr(tokenizer, ITEM_TOKEN_ATTR, None) if tokenizer is not None else None
    if not token or item_ids is None:
        return ""
    return [" " + token.format(int(i)) for i in item_ids]


def history_text(titles: Sequence[str], domain: Domain, item_suffix: str | Sequence[str] = "") -> str:
    """`item_suffix` follows each title (LLaRA puts its item placeholder token there): one string
    for every title, or one per title."""
    suffixes = [item_suffix] * len(titles) if isinstance(item_suffix, str) else list(item_suffix)
    if len(suffixes) != len(titles):
        raise ValueError(f"{len(suffixes)} item suffixes for {len(titles)} history titles")
    quoted = ", ".join(f'"{title}"{suffix}' for title, suffix in zip(titles, suffixes, strict=True))
    return f"The user has {domain.verb} the following {domain.items} before: {quoted}"


def response_text(title: str) -> str:
    return f'"{title}"'


RESPONSE_RULES = ("whole", "first-line")


def strip_response(text: str, rule: str = "whole") -> str:
    """Generated text -> the title grounding embeds, validity checks and the probe distance reads.

    `whole` (reference, evaluate_batch.py line 88): the whole generation with quotes, then spaces,
    stripped from both ends, so a run-on ('"A"\n"A"\n"') stays one long query.
    `first-line` (softrec's earlier rule): the first line only, whitespace and its quotes removed.
    """
    if rule == "whole":
        return text.strip('"').strip(" ")
    if rule != "first-line":
        raise ValueError(f"unknown response rule '{rule}': expected one of {', '.join(RESPONSE_RULES)}")
    text = text.strip().split("\n", 1)[0].strip()
    if len(text) >= 2 and text[0] == '"' and text.endswith('"'):
        return text[1:-1].strip()
    return text.strip('"').strip()


# A quote closes a title when the text ends after it, or a newline or another quoted title follows
# (after optional spaces and one separator: `"A", "B"`, `"A" and "B"`). A quote followed by a word is
# part of the title: an inch mark (`3/8" Bit`), or a title's own quoted word; a doubled quote (`0.5""`)
# is an inch mark, then the closing quote.
CLOSING_QUOTE = re.compile(r'"(?!")(?=\s*$|[ \t]*\n|\s*(?:,|;|and|or)?\s*")')
QUOTED_RULE = "closing-quote-v2"  # in distill keys: targets cut by an older rule are not reused


def first_quoted(text: str) -> str:
    """`text` cut right after its first closing quote (`CLOSING_QUOTE`): '"Title A"\n"Title B"' ->
    '"Title A"', but '"Bit 3/8" Set"' stays whole. An opening quote (after leading spaces) is
    skipped; a text with no closing quote stays as generated. (Version 1 cut at any quote: on
    amazon-industrial, where 21% of titles hold an inch mark, it truncated 11% of exact titles.)"""
    start = len(text) - len(text.lstrip())
    if text.startswith('"', start):
        start += 1
    end = CLOSING_QUOTE.search(text, start)
    return text if end is None else text[: end.start() + 1]


def build_prompt(
    titles: Sequence[str],
    domain: Domain,
    template: str = "alpaca",
    tokenizer: Any | None = None,
    item_suffix: str | Sequence[str] = "",
    item_ids: Sequence[int] | None = None,
) -> str:
    """The text the model reads; the response starts right after it.

    `item_ids` (the history's item ids) add LLaRA's placeholder tokens when `tokenizer` has them."""
    task = instruction(domain)
    if item_ids is not None and not item_suffix:
        item_suffix = item_suffixes(tokenizer, item_ids)
    context = history_text(titles, domain, item_suffix)
    if template == "alpaca":
        return (
            f"{ALPACA_HEADER}### Instruction:\n{task}\n\n### Input:\n{context}{INPUT_END}\n\n"
            "### Response:\n"
        )
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the chat template needs a tokenizer that has a chat_template")
        messages = [{"role": "user", "content": f"{task}\n\n{context}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt template '{template}': expected alpaca or chat")


class _PlaceholderTokenizer:
    softrec_item_token = "[HistoryEmb_{}]"


def sample_prompt(dataset: Any, sample: Any, template: str = "alpaca", tokenizer: Any = None, *,
                  start: int = 0) -> str:
    """The prompt of one sample of a prepared dataset: its history titles from `start` on (training
    drops the oldest first when a prompt is too long), with LLaRA's item tokens when the tokenizer
    has them. Training, distillation, the SOFT probe and evaluation all prompt through here."""
    history = sample.history[start:]
    titles = dataset.titles
    return build_prompt([titles[i] for i in history], dataset.domain, template, tokenizer, item_ids=history)


def end_token_id(tokenizer: Any, template: str = "alpaca") -> int:
    """The token appended to every response: the one generation stops on.

    Alpaca prompts end responses with EOS (Gemma: `<eos>`, SmolLM2: `<|im_end|>`); chat prompts end a
    model turn with the template's end-of-turn token where there is one (Gemma: `<end_of_turn>`).
    Both are in the converted checkpoints' `generation_config.eos_token_id`.
    """
    if template == "chat" and "<end_of_turn>" in tokenizer.get_vocab():
        return int(tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    if tokenizer.eos_token_id is None:
        from softrec.errors import UserError

        raise UserError("the tokenizer has no EOS token: training needs one to end each response")
    return int(tokenizer.eos_token_id)


def prompt_fingerprint(template: str = "alpaca") -> str:
    """A key of the prompt bytes (header, instruction, input, LLaRA placeholders, response).

    Training, distillation and evaluation keys include it, so a change of the prompt text makes
    finished runs stale instead of silently reusing artefacts made with the old text."""
    from softrec.runs import content_key

    domain = Domain()
    if template != "alpaca":  # the chat template's own bytes come from the tokenizer
        return content_key(template, instruction(domain), history_text(["A"], domain), response_text("T"))
    plain = build_prompt(["A", "B"], domain, template)
    llara = build_prompt(["A", "B"], domain, template, _PlaceholderTokenizer(), item_ids=[0, 1])
    return content_key(plain, llara, response_text("T"))
