"""The defaults are the reference code's choices (docs/fidelity.md); softrec's own are options."""

from __future__ import annotations

from softrec.config import Config, load_config
from softrec.training.batches import LengthGroupedSampler


def test_reference_defaults():
    config = Config()
    assert config.train.group_by_length is False  # random micro-batches (train.py: no grouping)
    assert config.eval.response_rule == "whole"  # evaluate_batch.py:88
    assert config.train.selection_tie_break is False  # train.py:256-264
    assert (config.eval.max_new_tokens, config.soft.distill_max_new_tokens) == (64, 64)  # inference.py:83


def test_llara_decodes_128_new_tokens_unless_told_otherwise():
    llara = load_config(values={"model.backbone": "llara"})  # inference_llara.py:205
    assert (llara.eval.max_new_tokens, llara.soft.distill_max_new_tokens) == (128, 128)
    assert llara.with_(train={"method": "soft"}).eval.max_new_tokens == 128
    told = load_config(None, ["eval.max_new_tokens=12"], {"model.backbone": "llara"})
    assert (told.eval.max_new_tokens, told.soft.distill_max_new_tokens) == (12, 128)


def test_random_batches_mix_lengths_grouped_ones_sort_them():
    lengths = list(range(64))
    random_order = list(LengthGroupedSampler(lengths, 8, seed=1, mega=1))
    grouped = list(LengthGroupedSampler(lengths, 8, seed=1, mega=8))
    spread = [max(b) - min(b) for b in (random_order[i:i + 8] for i in range(0, 64, 8))]
    assert sorted(grouped) == sorted(random_order) == lengths
    groups = sorted(sorted(grouped[i:i + 8]) for i in range(0, 64, 8))
    assert groups == [list(range(i, i + 8)) for i in range(0, 64, 8)]  # one mega-batch: contiguous runs
    assert max(spread) > 8  # random micro-batches are not grouped
