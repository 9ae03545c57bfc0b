"""The generation engine every stage uses: validation, self-distillation, the SOFT probe,
evaluation, `recommend`, ICL. Beam search, optionally constrained to catalogue titles.

`generate_beam_ids` gives the same beams as transformers' `generate` on the same model (see
`beam.py` for the loop and why it is exact) at a fraction of the cost:
- LoRA is folded into the weights while decoding (`decoding_model`), in the fastest dtype the
  hardware computes natively ("auto": bf16 on AMX/AVX512-BF16 CPUs and GPUs, fp32 elsewhere);
- prompts are sorted by length into large batches (the LM head's weights read once per step for
  many rows) and prefilled once, not once per beam, in groups of 8 that each pad only to their own
  longest prompt (`_start_in_groups`);
- the KV cache grows in place and only its generated tail is reordered (`cache.py`);
- a prompt leaves the batch as soon as its beams are final, and (unconstrained decoding) the next
  prompts of the queue take its slots, so the batch stays full instead of ending as a few rows
  that read the whole model per step;
- the LM head runs over vocabulary chunks, reduced on the fly to each row's log-normaliser and
  best tokens (`head.py`), instead of a [rows, vocabulary] logits tensor read back several times;
- constrained decoding ranks only the tokens that continue a title (`trie_tokens`).

`generate_baseline` (plain `generate` + `prefix_allowed_tokens_fn` over a dict trie) and
`generate_plain` (plain `generate` as a user runs it) are the references for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from softrec.hardware import use_bf16
from softrec.inference.beam import BeamResult, BeamSettings, CandidateFn, beam_search
from softrec.inference.cache import PromptSharedCache
from softrec.inference.head import ChunkedHead
from softrec.inference.trie import DictTrie, TitleTrie
from softrec.models.wrappers import causal_lm_of


@dataclass
class Beams:
    """One prompt's beams, best first: generated token ids (up to and including EOS) and texts;
    `steps`: the decoding steps the prompt took (None from `generate`, where the batch decides)."""

    token_ids: list[list[int]]
    texts: list[str]
    steps: int | None = None


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


def _length_order(prompts: Sequence[str]) -> list[int]:
    lengths = [len(p) for p in prompts]  # characters: a cheap, monotone stand-in for tokens
    return sorted(range(len(prompts)), key=lambda i: (lengths[i], i))


def _length_sorted_batches(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    order = _length_order(prompts)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


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
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        for indices in batches:
            encoded = encode_prompts(tokenizer, [prompts[i] for i in indices])
            for index, beams in zip(indices, decode_batch(encoded), strict=True):
                results[index] = beams
            bar.update(len(indices))
    return results  # type: ignore[return-value]


def decode_dtype(setting: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 where the device computes it natively (AMX/AVX512-BF16 CPUs, recent GPUs)."""
    if setting in ("float32", "bfloat16"):
        return getattr(torch, setting)
    return torch.bfloat16 if use_bf16("auto", device.type) else torch.float32


def _lora_layers(model: Any) -> list[Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]


@contextlib.contextmanager
def _merged_in_place(model: Any) -> Iterator[Any]:
    """`model` with LoRA folded into its weights; the base weights restored bit for bit afterwards
    (peft's unmerge subtracts, which drifts)."""
    saved = [(layer, layer.get_base_layer().weight.detach().clone()) for layer in _lora_layers(model)]
    try:
        for layer, _ in saved:
            layer.merge()
        yield model
    finally:
        for layer, weight in saved:
            layer.get_base_layer().weight.data.copy_(weight)
            layer.merged_adapters.clear()


@contextlib.contextmanager
def decoding_model(model: Any, dtype: torch.dtype | None = None) -> Iterator[Any]:
    """The model to decode with: LoRA folded into the weights (one matmul per projection instead of
    three), in `dtype`. In the model's own dtype the merge happens in place and is undone afterwards;
    another dtype decodes a merged copy made straight in that dtype, the caller's model untouched.
    Never a full-precision copy first: for Gemma 3 270M that raised the peak by 1.28 GiB instead of
    0.51 and left 0.34 GiB resident once freed, in every training process that validates
    (`benchmarks/bench_decoding_copy_memory.py`). LLaRA's embedding hooks stay on the original."""
    current = next(model.parameters()).dtype
    if dtype is None or dtype == current or hasattr(causal_lm_of(model), "llara_projector"):
        with _merged_in_place(model):
            yield model
        return
    with _merged_in_place(model):
        # deepcopy takes the memo's object for every parameter: each weight is copied once, cast
        memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()}
        twin = copy.deepcopy(model, memo)
    if hasattr(twin, "unload"):  # peft: its copied LoRA layers hold merged weights; keep only those
        twin = twin.unload()
    yield twin.to(dtype).eval()


def trie_tokens(trie: TitleTrie, head: ChunkedHead, n: int, pad: int) -> CandidateFn:
    """Constrained decoding: every row's n best tokens among those that continue a catalogue title.

    Log-probabilities are normalised over the whole vocabulary, then only the allowed (row, token)
    pairs are gathered and ranked: a few columns per row instead of the vocabulary.
    """

    def candidates(generated: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = head.log_probs(hidden)
        rows, tokens = trie.allowed_pairs(trie.states(generated))
        order = torch.argsort(rows, stable=True)
        rows, tokens = rows[order], tokens[order]
        counts = torch.bincount(rows, minlength=log_probs.shape[0])
        width = max(int(counts.max()), n)
        within = torch.arange(rows.numel()) - (torch.cumsum(counts, 0) - counts)[rows]
        rows, tokens, within = (x.to(log_probs.device) for x in (rows, tokens, within))
        values = log_probs.new_full((log_probs.shape[0], width), -float("inf"))
        values[rows, within] = log_probs[rows, tokens]
        ids = torch.full((log_probs.shape[0], width), pad, dtype=torch.long, device=log_probs.device)
        ids[rows, within] = tokens
        top = values.topk(n, dim=-1)
        return top.values, ids.gather(1, top.indices)

    return candidates


MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefill of the prefix costs more than it saves


def shared_prefix_length(input_ids: torch.Tensor, mask: torch.Tensor) -> int:
    """Tokens every prompt of a left-padded batch starts with (at most each prompt's length - 1, so
    every prompt keeps a token whose hidden state starts its beams)."""
    lengths = mask.sum(-1)
    width = int(lengths.min()) - 1
    if width <= 0 or input_ids.shape[0] < 2:
        return 0
    starts = input_ids.shape[1] - lengths
    columns = starts[:, None] + torch.arange(width, device=input_ids.device)
    heads = input_ids.gather(1, columns)  # each prompt's first `width` real tokens
    differs = (heads != heads[:1]).any(dim=0).nonzero()
    return int(differs[0]) if differs.numel() else width


def _prefill(body: Any, input_ids: torch.Tensor, mask: torch.Tensor, cache: PromptSharedCache,
             max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run every prompt once; return the last hidden states, the attention mask and the positions.

    Prompts built from one template share a long prefix (about 70 of 170 tokens of a BIGRec
    prompt): it is run once for the batch and its keys and values copied to every row, the rest
    of each prompt continuing after it, so its attention reads the same keys and values at the same
    positions as a plain prefill. The cache then holds [prefix][padding][rest] instead of
    [padding][prompt]; only a sliding-window layer would see the difference (its window counts cache
    slots), so the shared prefill is used only when the whole sequence fits inside the window.
    """
    rows, width = input_ids.shape
    lengths = mask.sum(-1)
    shared = shared_prefix_length(input_ids, mask)
    window = getattr(body.config, "sliding_window", None)
    if shared < MIN_SHARED_PREFIX or (window and width + max_new_tokens >= window):
        shared = 0  # a plain prefill: the whole prompt is the "rest"
    if shared:
        start = int(width - lengths[0])  # where the first prompt's tokens begin
        prefix = input_ids[:1, start : start + shared]
        body(input_ids=prefix, position_ids=torch.arange(shared, device=prefix.device)[None], cache=cache,
             use_cache=True)
        cache.repeat_rows(rows)
    # the rest of each prompt, left-padded: drop the prefix columns from each row's real tokens
    keep = torch.ones_like(mask, dtype=torch.bool)
    keep.scatter_(1, (width - lengths)[:, None] + torch.arange(shared, device=mask.device), False)
    rest_ids = input_ids[keep].view(rows, width - shared)
    rest_mask = mask[keep].view(rows, width - shared)
    full_mask = torch.cat([rest_mask.new_ones((rows, shared)), rest_mask], dim=1)
    positions = shared + (rest_mask.long().cumsum(-1) - 1).clamp(min=0)  # generate's rule for left padding
    first = body(input_ids=rest_ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                 use_cache=True).last_hidden_state[:, -1]
    return first, full_mask, positions


class _Batch:
    """One running batch of beam search: the KV cache and each row's attention mask and next
    position, prefilled once and refilled with new prompts as others finish."""

    def __init__(self, lm: Any, settings: BeamSettings):
        self.lm, self.body, self.settings = lm, lm.model, settings
        self.window = getattr(self.body.config, "sliding_window", None)
        self.cache = PromptSharedCache(lm.config)
        self.mask = self.position = torch.empty(0)

    def _run_prompts(self, encoded: dict[str, torch.Tensor], cache: PromptSharedCache) -> tuple[torch.Tensor, ...]:
        device = self.lm.device
        return _prefill(self.body, encoded["input_ids"].to(device), encoded["attention_mask"].to(device), cache,
                        self.settings.max_new_tokens)

    def start(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prefill the first prompts; their last hidden states [prompts, hidden]."""
        k = self.settings.num_beams
        first, mask, positions = self._run_prompts(encoded, self.cache)
        self.cache.expand_for_beams(k, self.settings.max_new_tokens)
        # the attention mask and positions are the same for every beam of a prompt: only the cache moves
        self.mask, self.position = mask.repeat_interleave(k, dim=0), (positions[:, -1] + 1).repeat_interleave(k)
        return first

    def fits(self, columns: int) -> bool:
        """Whether rows of `columns` prompt tokens can be joined in one cache: every generated token
        stays inside a sliding layer's window, so no layer's cache slides."""
        return not self.window or columns + self.settings.max_new_tokens < self.window

    def admit(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Prefill more prompts and append their rows; None when the cache cannot take them
        (a layer whose window would slide), and the prompts are left for a later batch."""
        if not (self.fits(max(self.mask.shape[1], encoded["input_ids"].shape[1])) and self.cache.can_append()):
            return None
        k, added = self.settings.num_beams, PromptSharedCache(self.lm.config)
        first, mask, positions = self._run_prompts(encoded, added)
        columns = self.cache.append_prompts(added, k, self.settings.max_new_tokens)

        def left_padded(m: torch.Tensor) -> torch.Tensor:
            return torch.cat([m.new_zeros((m.shape[0], columns - m.shape[1])), m], dim=1)

        self.mask = torch.cat([left_padded(self.mask), left_padded(mask).repeat_interleave(k, dim=0)])
        self.position = torch.cat([self.position, (positions[:, -1] + 1).repeat_interleave(k)])
        return first

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((tokens.shape[0], 1))], dim=1)
        out = self.body(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.position[:, None],
                        cache=self.cache, use_cache=True)
        self.position = self.position + 1
        return out.last_hidden_state[:, -1]

    def keep(self, prompts: torch.Tensor) -> None:
        k = self.settings.num_beams
        self.cache.select_prompts(prompts, k)
        rows = (prompts[:, None] * k + torch.arange(k, device=prompts.device)).reshape(-1)
        self.mask, self.position = self.mask[rows], self.position[rows]
        unused = int(self.mask.int().argmax(dim=1).min())  # leading columns masked in every row
        if unused and self.cache.can_append():
            self.cache.trim(unused)
            self.mask = self.mask[:, unused:]


PREFILL_GROUP = 8  # prompts per prefill: a batch's prompts differ in length; each group pads to its own longest


def _start_in_groups(batch: _Batch, tokenizer: Any, prompts: Sequence[str], admitted: list[int]) -> torch.Tensor:
    """Prefill a new batch's (length-sorted) prompts in groups of PREFILL_GROUP, each padded only to
    its own longest prompt, and join them into one cache; `admitted` keeps the prompts it took.

    Prefill runs near the matmul peak, so its cost is the padded token count: 32 random test
    prompts padded to their longest are ~half padding after the shared template prefix
    (benchmarks/results/generation-cpu-2026-11-30d). A group the cache cannot take (a layer whose
    window would slide) is dropped from `admitted`, back to the caller's queue.
    """
    groups = [admitted[i : i + PREFILL_GROUP] for i in range(0, len(admitted), PREFILL_GROUP)]
    encoded = [encode_prompts(tokenizer, [prompts[i] for i in group]) for group in groups]
    if len(encoded) == 1:
        return batch.start(encoded[0])
    if not batch.fits(max(group["input_ids"].shape[1] for group in encoded)):
        # prompts too long for rows to be joined: one prefill of the whole batch
        return batch.start(encode_prompts(tokenizer, [prompts[i] for i in admitted]))
    firsts = [batch.start(encoded[0])]
    for taken, group in enumerate(encoded[1:], start=1):
        first = batch.admit(group)
        if first is None:
            del admitted[taken * PREFILL_GROUP :]
            break
        firsts.append(first)
    return torch.cat(firsts)


def _decode(lm: Any, prompts: Sequence[str], tokenizer: Any, settings: BeamSettings, batch_size: int,
            trie: TitleTrie | None, record: Callable[[int, BeamResult], None], refill: bool) -> None:
    """Beam search over all prompts in length order, in batches of `batch_size` prompts whose
    finished slots are refilled from the queue (unconstrained decoding only: the trie reads each
    row's tokens, which refilled rows do not align)."""
    head, n = ChunkedHead(lm), settings.beams_to_keep
    if trie is None:
        def candidates(generated: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return head.top(hidden, n)
    else:
        candidates = trie_tokens(trie, head, n, settings.pad_id)
    order = _length_order(prompts)
    start = 0
    while start < len(order):
        batch, admitted = _Batch(lm, settings), order[start : start + batch_size]
        start += len(admitted)

        def admit(count: int, batch: _Batch = batch, admitted: list[int] = admitted) -> torch.Tensor | None:
            nonlocal start
            chosen = order[start : start + count]
            first = batch.admit(encode_prompts(tokenizer, [prompts[i] for i in chosen])) if chosen else None
            if first is not None:
                admitted += chosen
                start += len(chosen)
            return first

        taken = len(admitted)
        first = _start_in_groups(batch, tokenizer, prompts, admitted)
        start -= taken - len(admitted)  # prompts the cache could not take go back to the queue
        beam_search(first, batch.step, candidates, settings, reorder=batch.cache.reorder_cache, keep=batch.keep,
                    record=lambda index, result, admitted=admitted: record(admitted[index], result),
                    admit=admit if refill and trie is None else None)


@torch.inference_mode()
def generate_beam_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    batch_size: int = 32,
    constrain_to: TitleTrie | None = None,
    progress: bool = False,
    dtype: str = "auto",
    refill: bool = True,
) -> list[Beams]:
    """Per prompt, every beam's token ids (up to and including the stop token) and text, best first.

    The same beams as `model.generate(num_beams=..., early_stopping=False, do_sample=False)` on the
    same model (see beam.py), with LoRA folded in and `dtype` ("auto": bf16 where native). `refill`
    (unconstrained decoding): finished prompts' slots take the next prompts instead of idling.
    """
    from tqdm.auto import tqdm

    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
    stops = tuple(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    settings = BeamSettings(num_beams, max_new_tokens, length_penalty, stops, pad)
    results: list[Beams | None] = [None] * len(prompts)
    with decoding_model(model, decode_dtype(dtype, model.device)) as decoder, \
            tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:

        def record(index: int, found: BeamResult) -> None:
            results[index] = Beams(found.token_ids, tokenizer.batch_decode(found.token_ids, skip_special_tokens=True),
                                   found.steps)
            bar.update(1)

        _decode(causal_lm_of(decoder), prompts, tokenizer, settings, batch_size, constrain_to, record, refill)
    return results  # type: ignore[return-value]


def generate_beams(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    batch_size: int = 32,
    constrain_to: TitleTrie | None = None,
    progress: bool = False,
    dtype: str = "auto",
) -> list[list[str]]:
    """Per prompt, the beams' decoded texts (best first), special tokens stripped, not unquoted.

    With `constrain_to`, every beam that ends with EOS is a catalogue title's response. Deterministic:
    the same inputs give the same beams (batching changes only float noise).
    """
    beams = generate_beam_ids(
        model, tokenizer, prompts, num_beams=num_beams, max_new_tokens=max_new_tokens,
        length_penalty=length_penalty, batch_size=batch_size, constrain_to=constrain_to,
        progress=progress, dtype=dtype,
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


@torch.inference_mode()
def generate_plain(model: Any, tokenizer: Any, prompts: Sequence[str], *, num_beams: int, max_new_tokens: int,
                   length_penalty: float = 1.0, batch_size: int = 8, progress: bool = False) -> list[Beams]:
    """Plain `model.generate` as a user runs it (the model as given, batches in input order)."""
    config = _generation_config(model, tokenizer, num_beams, max_new_tokens, length_penalty)
    results: list[Beams] = []
    for start in range(0, len(prompts), batch_size):
        encoded = encode_prompts(tokenizer, prompts[start : start + batch_size])
        input_ids = encoded["input_ids"].to(model.device)
        sequences = model.generate(input_ids=input_ids, attention_mask=encoded["attention_mask"].to(model.device),
                                   generation_config=config)
        results += _split_beams(tokenizer, sequences, input_ids.shape[1], num_beams, config.eos_token_id)
    return results
