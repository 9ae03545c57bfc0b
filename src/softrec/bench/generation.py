"""Generation speed against plain `model.generate`, side by side on the same prompts and adapter,
with the roofline of the machine it ran on.

- plain: `generate_plain`, i.e. `model.generate` as a user runs it: the peft model as loaded (fp32,
  adapter unmerged), batches of 8 prompts in input order, 4 beams, up to 64 new tokens;
- engine: `generate_beam_ids` with its defaults (LoRA folded in, the hardware's fastest dtype,
  large length-sorted batches, prompts leaving the batch when final).
Evaluation rows include L2 grounding of the top beam (the catalogue's embeddings computed before
timing, as the disk cache provides them in a real run); distillation rows are generation alone.
Top beams are compared with plain `generate` run in the engine's own dtype.

The roofline: the measured dense matmul rate in the engine's dtype and the memory bandwidth of a
large copy; the engine's executed FLOPs (counted from the token rows each forward ran: decoder
linear maps, attention over the cache, and the LM head where logits were computed) over its wall
time give the fraction of the matmul peak that generation reaches.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, Any]:
    """GB/s of a large tensor copy (bytes read + bytes written), the median of `repeats`."""
    source = torch.ones(megabytes * (1 << 20) // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        rates.append(2 * source.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return {"repeats": rates, "median": statistics.median(rates), "megabytes": megabytes}


@dataclass
class Shape:
    """What one token costs in a decoder: weights of its linear maps, attention width, LM head."""

    linear: int  # decoder layers' q/k/v/o and MLP weights (no embeddings, norms or head)
    attention: int  # layers x heads x head_dim (QK^T and AV per cached token: 4 x this FLOPs)
    head: int  # vocabulary x hidden

    @classmethod
    def of(cls, model: Any) -> Shape:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        linear = sum(p.numel() for n, p in model.named_parameters()
                     if p.dim() == 2 and ".layers." in n and "lora_" not in n)
        return cls(linear, config.num_hidden_layers * config.num_attention_heads * head_dim,
                   config.vocab_size * config.hidden_size)


class FlopCounter:
    """Counts the FLOPs of every forward of a causal LM's decoder body (a pre-hook on it): the
    decoder layers for every token, and the LM head once per sequence and call (the last position:
    prefill, each decoding step, an embedding), which is where the engine and `generate` run it."""

    def __init__(self, model: Any, shape: Shape):
        self.shape, self.flops, self.model = shape, 0.0, model
        self.handle = None

    def __enter__(self) -> FlopCounter:
        self.handle = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()

    def __deepcopy__(self, memo: dict) -> FlopCounter:
        # The engine decodes a deep copy when its dtype is not the model's (bf16 on a GPU or an AMX
        # CPU); the copy's hook must count here, not into a copy of this counter.
        return self

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        rows, new = ids.shape
        context = mask.shape[1] if mask is not None else new
        self.flops += 2 * self.shape.linear * rows * new
        self.flops += 4 * self.shape.attention * rows * new * context  # upper bound: full context
        self.flops += 2 * self.shape.head * rows


def compare_stage(model: Any, tokenizer: Any, prompts: Sequence[str], *, num_beams: int = 4,
                  max_new_tokens: int = 64, plain_batch: int = 8, engine_batch: int | None = None,
                  dtype: str = "auto", after: Callable[[list[str]], Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plain `generate` and the engine on the same prompts; `after(top_beams)` (grounding) is timed
    with each. Returns prompts/s of both, their ratio, identical top beams and the engine's FLOPs."""
    from softrec.bench.timing import stopwatch as timed
    from softrec.inference.generate import decode_dtype, generate_beam_ids, generate_plain
    from softrec.models.wrappers import causal_lm_of

    settings = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    engine_kwargs = {"batch_size": engine_batch} if engine_batch else {}
    with timed() as plain_s:
        plain = generate_plain(model, tokenizer, prompts, batch_size=plain_batch, **settings)
        if after:
            after([b.texts[0] for b in plain])
    log(f"  plain generate: {len(prompts)} prompts in {plain_s[0]:.1f} s")
    with FlopCounter(causal_lm_of(model).model, Shape.of(model)) as counter, timed() as engine_s:
        engine = generate_beam_ids(model, tokenizer, prompts, dtype=dtype, **engine_kwargs, **settings)
        if after:
            after([b.texts[0] for b in engine])
    log(f"  engine: {len(prompts)} prompts in {engine_s[0]:.1f} s")
    engine_dtype = decode_dtype(dtype, model.device)
    reference = plain
    if engine_dtype != next(model.parameters()).dtype:  # compare with plain generate in that dtype
        import copy

        twin = copy.deepcopy(model).to(engine_dtype)
        reference = generate_plain(twin, tokenizer, prompts, batch_size=plain_batch, **settings)
        del twin
    same_top = sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(engine, reference, strict=True))
    same_all = sum(a.token_ids == b.token_ids for a, b in zip(engine, reference, strict=True))
    differing = [{"prompt": i, "engine": a.texts[0], "plain": b.texts[0]}
                 for i, (a, b) in enumerate(zip(engine, reference, strict=True)) if a.token_ids[0] != b.token_ids[0]]
    n = len(prompts)
    return {
        "prompts": n,
        "plain_prompts_per_s": n / plain_s[0],
        "engine_prompts_per_s": n / engine_s[0],
        "ratio": plain_s[0] / engine_s[0],
        "plain_seconds": plain_s[0],
        "engine_seconds": engine_s[0],
        "engine_dtype": str(engine_dtype).removeprefix("torch."),
        "identical_top_beams": same_top,
        "identical_all_beams": same_all,
        "differing_top_beams": differing,
        "mean_top_beam_tokens": statistics.mean(len(b.token_ids[0]) for b in engine),
        "engine_gflop": counter.flops / 1e9,
        "engine_gflop_per_s": counter.flops / 1e9 / engine_s[0],
    }
