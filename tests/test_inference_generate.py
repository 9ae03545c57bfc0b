"""Beam search over batches of prompts: the prefilled-cache path equals plain `generate`."""

from __future__ import annotations

import torch

from softrec.data.prompts import build_prompt
from softrec.inference.generate import encode_prompts, generate_beam_ids, generate_beams


def _prompts(dataset, n=5):
    titles = dataset.titles
    return [build_prompt([titles[i] for i in s.history], dataset.domain) for s in dataset.split("train")[:n]]


def test_same_beams_as_plain_generate(tiny_backbone, tiny_dataset):
    model, tokenizer = tiny_backbone
    prompts = _prompts(tiny_dataset, 3)
    ours = generate_beam_ids(model, tokenizer, prompts, num_beams=3, max_new_tokens=6, batch_size=3)
    encoded = encode_prompts(tokenizer, prompts)
    plain = model.generate(**encoded, num_beams=3, num_return_sequences=3, max_new_tokens=6, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.batch_decode(plain[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [text for beams in ours for text in beams.texts] == expected


def test_batching_and_order_do_not_change_results(tiny_backbone, tiny_dataset):
    model, tokenizer = tiny_backbone
    prompts = _prompts(tiny_dataset, 5)
    one = generate_beams(model, tokenizer, prompts, num_beams=2, max_new_tokens=5, batch_size=1)
    many = generate_beams(model, tokenizer, prompts, num_beams=2, max_new_tokens=5, batch_size=4)
    again = generate_beams(model, tokenizer, prompts, num_beams=2, max_new_tokens=5, batch_size=4)
    assert one == many == again
    assert all(len(texts) == 2 for texts in one)
    reversed_order = generate_beams(model, tokenizer, prompts[::-1], num_beams=2, max_new_tokens=5, batch_size=4)
    assert reversed_order == one[::-1]


def test_generation_leaves_no_grad_state(tiny_backbone, tiny_dataset):
    model, tokenizer = tiny_backbone
    generate_beams(model, tokenizer, _prompts(tiny_dataset, 1), num_beams=2, max_new_tokens=2)
    assert torch.is_grad_enabled()
