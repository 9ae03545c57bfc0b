"""Tokenization, response-only targets, left truncation of the history, length grouping."""

from __future__ import annotations

import torch

from softrec.data.prompts import build_prompt, end_token_id, response_text
from softrec.training.batches import (
    Collator,
    EncodedDataset,
    LengthGroupedSampler,
    encode_sample,
    encode_samples,
)
from softrec.training.loss import IGNORE


def test_targets_cover_exactly_the_response_and_end_token(tiny_backbone, tiny_dataset):
    _, tokenizer = tiny_backbone
    samples = tiny_dataset.split("train")[:4]
    encoded = encode_samples(samples, tiny_dataset, tokenizer)
    batch = Collator(tokenizer.pad_token_id)(encoded)
    assert batch["targets_distilled"] is None and "soft_lambda" not in batch  # the loss reads the curriculum
    for row, (sample, enc) in enumerate(zip(samples, encoded, strict=True)):
        targets = batch["targets"][row]
        where = (targets != IGNORE).nonzero().flatten().tolist()
        p = len(enc.prompt_ids)
        # the hidden state at the last prompt token predicts the first response token, and so on
        assert where == list(range(p - 1, p - 1 + len(enc.real_ids)))
        scored = targets[where].tolist()
        assert scored[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(scored[:-1]) == response_text(tiny_dataset.titles[sample.target])
        # the input row is prompt + response, then padding
        ids = batch["input_ids"][row].tolist()
        assert ids[:p] == enc.prompt_ids and ids[p : p + len(enc.real_ids)] == enc.real_ids
        assert batch["attention_mask"][row].sum() == p + len(enc.real_ids)
    assert batch["input_ids"].shape[1] % 8 == 0


def test_prompt_is_the_reference_prompt(tiny_backbone, tiny_dataset):
    _, tokenizer = tiny_backbone
    sample = tiny_dataset.split("train")[0]
    enc = encode_sample(sample, tiny_dataset, tokenizer)
    titles = [tiny_dataset.titles[i] for i in sample.history]
    assert tokenizer.decode(enc.prompt_ids) == build_prompt(titles, tiny_dataset.domain)


def test_truncation_drops_oldest_history_titles_and_keeps_response(tiny_backbone, tiny_dataset):
    _, tokenizer = tiny_backbone
    sample = max(tiny_dataset.split("train"), key=lambda s: len(s.history))
    assert len(sample.history) >= 3
    full = encode_sample(sample, tiny_dataset, tokenizer)
    max_length = len(full.prompt_ids) + len(full.real_ids) - 1
    cut = encode_sample(sample, tiny_dataset, tokenizer, max_length=max_length)
    assert cut.real_ids == full.real_ids
    assert len(cut.prompt_ids) + len(cut.real_ids) <= max_length
    text = tokenizer.decode(cut.prompt_ids)
    newest, oldest = (tiny_dataset.titles[sample.history[i]] for i in (-1, 0))
    assert f'"{newest}"' in text and f'"{oldest}"' not in text
    assert text.endswith("### Response:\n")


def test_end_token_is_a_stop_token(tiny_backbone):
    _, tokenizer = tiny_backbone
    assert end_token_id(tokenizer) == tokenizer.eos_token_id
    assert end_token_id(tokenizer, "chat") == tokenizer.eos_token_id  # no <end_of_turn> in this vocab


def test_packed_soft_batch_layout(tiny_backbone, tiny_dataset):
    _, tokenizer = tiny_backbone
    samples = tiny_dataset.split("train")[:3]
    distilled = {s.sample_id: '"Dune"' for s in samples}
    encoded = encode_samples(samples, tiny_dataset, tokenizer, distilled=distilled)
    batch = Collator(tokenizer.pad_token_id, lambda: 0.25)(encoded)
    assert batch["targets"] is not None and batch["targets_distilled"] is not None  # 0 < lambda < 1: both
    mask, positions = batch["attention_mask"], batch["position_ids"]
    assert mask.dtype == torch.bool and mask.dim() == 4
    enc = encoded[0]
    p, r = len(enc.prompt_ids), len(enc.real_ids)
    first_distilled = p + r
    # distilled tokens see the prompt and themselves, never the real response; positions restart at p
    assert mask[0, 0, first_distilled, :p].all()
    assert not mask[0, 0, first_distilled, p : p + r].any()
    assert positions[0, first_distilled] == p
    both = batch["targets"][0] != IGNORE, batch["targets_distilled"][0] != IGNORE
    assert both[0][p - 1] and both[1][p - 1]  # both responses start from the last prompt token
    assert batch["targets_distilled"][0][both[1]].tolist() == enc.distilled_ids


def test_length_grouped_sampler_is_a_reproducible_permutation():
    lengths = [5, 100, 7, 90, 6, 95, 8, 99, 4, 98, 97]  # 6 long, 5 short
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))
    assert list(sampler) == first  # same epoch, same order (no global RNG)
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == list(range(len(lengths)))
    # micro-batches group similar lengths: each full pair is two short or two long samples
    pairs = [first[i : i + 2] for i in range(0, 10, 2)]
    assert all((lengths[a] > 50) == (lengths[b] > 50) for a, b in pairs)
    assert len(EncodedDataset([])) == 0
