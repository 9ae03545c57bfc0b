"""Batched beam search over prompts, optionally constrained to catalogue titles.

Built on `transformers` `generate` (left padding, deterministic beam search). One saving matters
most: `generate` copies every prompt `num_beams` times BEFORE its prefill, so a 250-token prompt
with 10 beams is run through the model 10 times. Here the prompts are prefilled once (all but the
last token), the KV cache is repeated per beam, and `generate` continues from that cache: the same
beam search, up to float noise, at a fraction of the prefill cost. Prompts are sorted by length
before batching so batches carry little padding; results come back in the input order.

`generate_baseline` is the straightforward reference (plain `generate` with a
`prefix_allowed_tokens_fn` over a Python dict trie) used by the equivalence test and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

from softrec.inference.trie import DictTrie, TitleTrie, TrieLogitsProcessor


@dataclass
class Beams:
    """One prompt's beams, best first: generated token ids (up to and including EOS) and texts."""

    token_ids: list[list[int]]
    texts: list[str]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS and the checkpoint's generation EOS ids
    (Gemma lists `<eos>` and `<end_of_turn>`, the chat template's end of turn)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _generation_config(model: Any, tokenizer: Any, num_beams: int, max_new_tokens: int,
                       length_penalty: float) -> GenerationConfig:
    """A fresh config, so a checkpoint's sampling defaults (Gemma ships do_sample=True) never leak in."""
    return GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        do_sample=False,
        early_stopping=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
        bos_token_id=tokenizer.bos_token_id,
    )


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch; BOS is added unless the prompt already starts with it (chat templates)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    return tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)


def _length_sorted_batches(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    lengths = [len(p) for p in prompts]  # characters: a cheap, monotone stand-in for tokens
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int) -> DynamicCache | None:
    """KV cache of every prompt but its last token, computed once and repeated for each beam.

    Position ids follow `generate`'s rule for left padding (cumsum of the mask - 1), so the cached
    keys are those `generate` would have computed itself.
    """
    if input_ids.shape[1] < 2:
        return None
    cache = DynamicCache(config=model.config)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(num_beams)
    return cache


def _split_beams(tokenizer: Any, sequences: torch.Tensor, prompt_length: int, num_beams: int,
                 stop_ids: Sequence[int]) -> list[Beams]:
    pad = tokenizer.pad_token_id
    out = []
    for rows in sequences[:, prompt_length:].view(-1, num_beams, sequences.shape[1] - prompt_length):
        token_ids = []
        for row in rows.tolist():
            ends = [i for i, token in enumerate(row) if token in stop_ids]
            if ends:
                row = row[: ends[0] + 1]
            elif pad is not None:
                while row and row[-1] == pad:
                    row.pop()
            token_ids.append(row)
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        out.append(Beams(token_ids, texts))
    return out


def _run_batches(
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int,
    progress: bool,
    decode_batch: Callable[[dict[str, torch.Tensor]], list[Beams]],
) -> list[Beams]:
    from tqdm.auto import tqdm

    results: list[Beams | None] = [None] * len(prompts)
    batches = list(_length_sorted_batches(tokenizer, prompts, batch_size))
    for indices in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        encoded = encode_prompts(tokenizer, [prompts[i] for i in indices])
        for index, beams in zip(indices, decode_batch(encoded), strict=True):
            results[index] = beams
    return results  # type: ignore[return-value]


@torch.inference_mode()
def generate_beam_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    batch_size: int = 8,
    constrain_to: TitleTrie | None = None,
    progress: bool = False,
) -> list[Beams]:
    """Per prompt, every beam's token ids and text (best first). See `generate_beams`."""
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
    config = _generation_config(model, tokenizer, num_beams, max_new_tokens, length_penalty)
    device = model.device

    def decode_batch(encoded: dict[str, torch.Tensor]) -> list[Beams]:
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        processors = LogitsProcessorList()
        if constrain_to is not None:
            processors.append(TrieLogitsProcessor(constrain_to, input_ids.shape[1]))
        sequences = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=_prefill(model, input_ids, attention_mask, num_beams),
            generation_config=config,
            logits_processor=processors,
        )
        return _split_beams(tokenizer, sequences, input_ids.shape[1], num_beams, config.eos_token_id)

    return _run_batches(tokenizer, prompts, batch_size, progress, decode_batch)


def generate_beams(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    batch_size: int = 8,
    constrain_to: TitleTrie | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """Per prompt, the beams' decoded texts (best first), special tokens stripped, not unquoted.

    With `constrain_to`, every beam that ends with EOS is a catalogue title's response. Deterministic:
    the same inputs give the same beams (batching changes only float noise).
    """
    beams = generate_beam_ids(
        model, tokenizer, prompts, num_beams=num_beams, max_new_tokens=max_new_tokens,
        length_penalty=length_penalty, batch_size=batch_size, constrain_to=constrain_to,
        progress=progress,
    )
    return [b.texts for b in beams]


@torch.inference_mode()
def generate_baseline(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    trie: DictTrie,
    length_penalty: float = 1.0,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Beams]:
    """Reference constrained decoding: plain `generate` + `prefix_allowed_tokens_fn` over `trie`."""
    config = _generation_config(model, tokenizer, num_beams, max_new_tokens, length_penalty)
    device = model.device

    def decode_batch(encoded: dict[str, torch.Tensor]) -> list[Beams]:
        input_ids = encoded["input_ids"].to(device)
        sequences = model.generate(
            input_ids=input_ids,
            attention_mask=encoded["attention_mask"].to(device),
            generation_config=config,
            prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(input_ids.shape[1]),
        )
        return _split_beams(tokenizer, sequences, input_ids.shape[1], num_beams, config.eos_token_id)

    return _run_batches(tokenizer, prompts, batch_size, progress, decode_batch)
