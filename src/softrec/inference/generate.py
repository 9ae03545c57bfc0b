"""Batched beam search over prompts, optionally constrained to catalogue titles.

Built on `transformers` `generate` (left padding, deterministic beam search). One saving matters
most: `generate` copies every prompt `num_beams` times BEFORE its prefill, so a 250-token prompt
with 10 beams is run through the model 10 times. Here the prompts are prefilled once (all but the
last token), the KV cache is repeated per beam, and `generate` continues from that cache: the same
beam search, up to float noise, at a fraction of the prefill cost. Prompts are sorted by length
before batching so batches carry little padding; results come back in the input order.

Constrained decoding also shrinks the vocabulary `generate` works over: the model reads and scores
only the tokens that occur in catalogue titles (plus a sink column, see `_token_subset`), so the
per-step log-softmax, beam top-k and masking cover thousands of columns instead of 262k. The LM head
still computes every logit, so each kept token's log-probability is the full-vocabulary one.

`generate_baseline` is the straightforward reference (plain `generate` with a
`prefix_allowed_tokens_fn` over a Python dict trie) used by the equivalence test and the benchmark.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from softrec.inference.trie import DictTrie, TitleTrie, TokenSubset, TrieLogitsProcessor


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


class PromptSharedCache(DynamicCache):
    """A KV cache whose rows are one prefilled prompt repeated for each of its beams.

    Two copies of the whole cache per step dominate CPU beam search over a few-hundred-token
    prompt, and both are avoidable:
    - reordering: beam search only moves beams within their own prompt's group, and the prefilled
      part of every row in a group is the same copy, so only the tokens added after the prefill
      are reordered;
    - growing: `expand_for_beams` preallocates room for the new tokens, so each step writes its
      keys and values in place instead of concatenating a new cache.
    The values seen by attention are exactly those of a plain `DynamicCache`.
    """

    def __init__(self, config: Any):
        super().__init__(config=config)
        self.shared_length = 0  # tokens identical within each prompt's group of rows
        self._room: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def expand_for_beams(self, num_beams: int, extra: int) -> None:
        """Repeat every prompt's rows `num_beams` times, into buffers with room for `extra` tokens."""
        self.shared_length = self.get_seq_length()
        for index, layer in enumerate(self.layers):
            growable = type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and layer.is_initialized
            if growable and layer.is_sliding and layer.cumulative_length + extra >= layer.sliding_window:
                growable = False  # the window would slide: keep the standard path
            if not growable:
                layer.batch_repeat_interleave(num_beams)
                continue
            length = layer.keys.shape[-2]
            buffers = []
            for tensor in (layer.keys, layer.values):
                rows, heads, _, dim = tensor.shape
                buffer = tensor.new_empty((rows * num_beams, heads, length + extra, dim))
                buffer.view(rows, num_beams, heads, length + extra, dim)[:, :, :, :length] = tensor[:, None]
                buffers.append(buffer)
            self._room[index] = (buffers[0], buffers[1])
            layer.keys, layer.values = buffers[0][:, :, :length], buffers[1][:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        room = self._room.get(layer_idx)
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if room is None or layer is None:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        start, new = layer.keys.shape[-2], key_states.shape[-2]
        if start + new > room[0].shape[-2]:
            del self._room[layer_idx]  # out of room: back to concatenation
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        room[0][:, :, start : start + new] = key_states
        room[1][:, :, start : start + new] = value_states
        layer.keys, layer.values = room[0][:, :, : start + new], room[1][:, :, : start + new]
        if layer.is_sliding:
            layer.cumulative_length += new
        return layer.keys, layer.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for index, layer in enumerate(self.layers):
            if not getattr(layer, "is_initialized", False) or layer.get_seq_length() == 0:
                continue
            stored = layer.keys.shape[-2]
            total = getattr(layer, "cumulative_length", stored)  # sliding layers drop old tokens
            tail = total - self.shared_length
            if tail >= stored:  # the shared part slid out of the window: plain reorder
                layer.reorder_cache(beam_idx)
                self._room.pop(index, None)
            elif tail > 0:
                rows = beam_idx.to(layer.keys.device)
                for tensor in (layer.keys, layer.values):
                    recent = tensor[:, :, -tail:]
                    recent.copy_(recent.index_select(0, rows))


def _prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int,
             max_new_tokens: int) -> DynamicCache | None:
    """KV cache of every prompt but its last token, computed once and repeated for each beam.

    Position ids follow `generate`'s rule for left padding (cumsum of the mask - 1), so the cached
    keys are those `generate` would have computed itself.
    """
    if input_ids.shape[1] < 2:
        return None
    cache = PromptSharedCache(model.config)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.expand_for_beams(num_beams, max_new_tokens + 1)  # the last prompt token, then each new one
    return cache


def _can_use_subset(model: Any) -> bool:
    """The sink trick needs the LM head's output to be the final logits (no soft-capping after it)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return (
        model.get_input_embeddings() is not None
        and model.get_output_embeddings() is not None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )


@contextlib.contextmanager
def _token_subset(model: Any, subset: TokenSubset) -> Iterator[None]:
    """Make the model read subset ids and score subset ids plus a sink column.

    The sink's logit is the log-sum-exp of every token outside the subset, so a softmax over the
    n + 1 columns gives each kept token exactly its full-vocabulary probability (up to rounding).
    Installed as forward hooks on the input embedding and the LM head, removed on exit.
    """
    original = subset.original.to(model.device)

    def read(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (original[args[0]], *args[1:]), kwargs
        return args, {**kwargs, "input": original[kwargs["input"]]}

    def score(module: Any, args: tuple, logits: torch.Tensor) -> torch.Tensor:
        kept = logits[..., original[:-1]]
        # log-sum-exp of the other logits, in place on the fresh logits tensor (no 262k-wide copies)
        logits[..., original[:-1]] = -float("inf")
        top = logits.amax(dim=-1, keepdim=True)
        rest = logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log_().add_(top)
        return torch.cat([kept, rest], dim=-1)

    handles = [
        model.get_input_embeddings().register_forward_pre_hook(read, with_kwargs=True),
        model.get_output_embeddings().register_forward_hook(score),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _generate_in_subset(model: Any, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        cache: DynamicCache | None, config: GenerationConfig, trie: TitleTrie) -> torch.Tensor:
    """`generate` constrained to `trie`, run over the trie's tokens; returns token-id sequences."""
    stops = list(config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    vocab_size = model.get_output_embeddings().weight.shape[0]
    # only the last prompt token is ever read by generate (the rest is cached): keep it too
    extra = torch.tensor([*stops, pad, *input_ids[:, -1].tolist()])
    subset = TokenSubset.of(torch.cat([trie.tokens, extra]), vocab_size, filler=pad)
    ids = input_ids.cpu()
    # ids past the vocabulary (LLaRA item tokens) sit in the cached prompt only: any stand-in will do
    reduced = subset.index[ids.clamp(max=subset.index.shape[0] - 1)].masked_fill(ids >= subset.index.shape[0], -1)
    reduced = reduced.masked_fill(reduced < 0, int(subset.index[pad])).to(input_ids.device)
    local = copy.deepcopy(config)
    local.eos_token_id = [int(subset.index[t]) for t in stops]
    local.pad_token_id = int(subset.index[pad])
    local.bos_token_id = None
    processor = TrieLogitsProcessor(trie, input_ids.shape[1], subset)
    with _token_subset(model, subset):
        sequences = model.generate(
            input_ids=reduced, attention_mask=attention_mask, past_key_values=cache,
            generation_config=local, logits_processor=LogitsProcessorList([processor]),
        )
    return subset.original.to(sequences.device)[sequences]


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
    use_subset: bool = True,
) -> list[Beams]:
    """Per prompt, every beam's token ids and text (best first). See `generate_beams`.

    `use_subset=False` keeps constrained decoding on the full vocabulary (for comparison).
    """
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
    config = _generation_config(model, tokenizer, num_beams, max_new_tokens, length_penalty)
    device = model.device

    subset = constrain_to is not None and use_subset and _can_use_subset(model)

    def decode_batch(encoded: dict[str, torch.Tensor]) -> list[Beams]:
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        cache = _prefill(model, input_ids, attention_mask, num_beams, max_new_tokens)
        if subset:
            sequences = _generate_in_subset(model, tokenizer, input_ids, attention_mask, cache, config, constrain_to)
        else:
            processors = LogitsProcessorList()
            if constrain_to is not None:
                processors.append(TrieLogitsProcessor(constrain_to, input_ids.shape[1]))
            sequences = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                generation_config=config, logits_processor=processors,
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
