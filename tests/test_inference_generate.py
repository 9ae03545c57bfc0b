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


def test_generation_between_training_steps_leaves_the_model_as_training_needs_it(tiny_dataset):
    """SOFT's probe decodes in the middle of training: decoding merges LoRA into the weights under
    inference mode and must restore everything, so that the next training step computes exactly the
    gradients it would have computed without the decoding (weights bit for bit, no merged layer,
    no inference tensor swapped in as a parameter, grad mode and train mode unchanged)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from softrec.models.registry import load_backbone

    base, tokenizer = load_backbone("tiny")
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so that merging it changes the weights
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if "lora_" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(index))
    prompts = _prompts(tiny_dataset, 2)
    ids = tokenizer(prompts[0], return_tensors="pt").input_ids

    def gradients():
        model.eval()  # no dropout: the two backward passes must be comparable bit for bit
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return grads

    before = gradients()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    generate_beams(model, tokenizer, prompts, num_beams=2, max_new_tokens=3)
    assert torch.is_grad_enabled() and model.training
    assert all(p.grad is None for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers and not any(layer.merged for layer in layers)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert not any(p.is_inference() for p in model.parameters())
    after_weights = model.state_dict()
    assert all(torch.equal(after_weights[k], v) for k, v in weights.items())
    after = gradients()  # raises if an inference tensor became a parameter
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
