"""The generation benchmark's FLOP count covers the copy the engine decodes in another dtype."""

from __future__ import annotations

from softrec.bench.generation import FlopCounter, Shape
from softrec.inference.generate import generate_beam_ids
from softrec.models.wrappers import causal_lm_of


def test_flops_are_counted_when_the_engine_decodes_a_bf16_copy(tiny_backbone):
    model, tokenizer = tiny_backbone
    counted = {}
    for dtype in ("float32", "bfloat16"):  # fp32: the model itself; bf16: a deep copy of it
        with FlopCounter(causal_lm_of(model).model, Shape.of(model)) as counter:
            generate_beam_ids(model, tokenizer, ["a b c", "hello there"], num_beams=2, max_new_tokens=3, dtype=dtype)
        counted[dtype] = counter.flops
    assert counted["float32"] > 0
    assert counted["bfloat16"] > 0
