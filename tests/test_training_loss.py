"""The fast loss (LM head only at labelled positions) equals the plain full-logits loss."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from softrec.hardware import use_bf16
from softrec.models.tiny import tiny_tokenizer
from softrec.training.batches import Collator, encode_samples
from softrec.training.loss import IGNORE, lm_losses

# fp32 on CPU: the two paths differ only in summation order.
RTOL, ATOL = 1e-5, 1e-5


def _hf_shifted_loss(model, batch, key="targets"):
    """The textbook causal-LM loss: full logits, labels un-shifted by one, HF's own shift."""
    targets = batch[key]
    labels = torch.full_like(targets, IGNORE)
    labels[:, 1:] = targets[:, :-1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    return out.loss


def _batch(dataset, tokenizer, model, lam=0.0, distilled=None, n=6):
    samples = dataset.split("train")[:n]
    encoded = encode_samples(samples, dataset, tokenizer, distilled=distilled)
    return Collator(tokenizer.pad_token_id, lambda: lam, model_config=model.config)(encoded)


def _distilled(dataset, n=6):
    return {s.sample_id: f'"{dataset.titles[(s.target + 1) % 30]} and more"' for s in dataset.split("train")[:n]}


def test_fast_loss_equals_full_logits_and_hf_loss(tiny_backbone, tiny_dataset):
    model, tokenizer = tiny_backbone
    batch = _batch(tiny_dataset, tokenizer, model)
    with torch.no_grad():
        (fast,) = lm_losses(model, batch, ["targets"], fast=True)
        (full,) = lm_losses(model, batch, ["targets"], fast=False)
        reference = _hf_shifted_loss(model, batch)
    torch.testing.assert_close(fast, full, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fast, reference, rtol=RTOL, atol=ATOL)


def test_fast_loss_equals_full_through_lora_including_gradients(tiny_backbone, tiny_dataset):
    base, tokenizer = tiny_backbone
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(copy.deepcopy(base), config)
    for name, param in model.named_parameters():  # non-zero B so that LoRA changes the output
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    batch = _batch(tiny_dataset, tokenizer, model)
    grads = []
    for fast in (True, False):
        model.zero_grad()
        (loss,) = lm_losses(model, batch, ["targets"], fast=fast)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["loss"] = loss.detach()
    torch.testing.assert_close(grads[0]["loss"], grads[1]["loss"], rtol=RTOL, atol=ATOL)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def _tiny_gemma(tokenizer, softcap):
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=24,
        layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=softcap,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_fast_loss_applies_final_logit_softcapping(tiny_dataset, softcap):
    tokenizer = tiny_tokenizer()
    model = _tiny_gemma(tokenizer, softcap)
    batch = _batch(tiny_dataset, tokenizer, model)
    with torch.no_grad():
        (fast,) = lm_losses(model, batch, ["targets"], fast=True)
        (full,) = lm_losses(model, batch, ["targets"], fast=False)
    torch.testing.assert_close(fast, full, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma3-sliding-window"])
def test_packed_soft_row_equals_two_separate_rows(tiny_backbone, tiny_dataset, gemma):
    """One packed row (prompt + real + distilled, custom mask) == the two plain rows' losses.

    The Gemma variant has a 24-token sliding window, far below the ~200-token rows, so the per-layer
    window mask on positions is exercised too."""
    tokenizer = tiny_backbone[1]
    model = _tiny_gemma(tokenizer, None) if gemma else tiny_backbone[0]
    distilled = _distilled(tiny_dataset)
    with torch.no_grad():
        packed = _batch(tiny_dataset, tokenizer, model, lam=0.5, distilled=distilled)
        real_p, dist_p = lm_losses(model, packed, ["targets", "targets_distilled"], fast=True)
        (real,) = lm_losses(model, _batch(tiny_dataset, tokenizer, model, 0.0, distilled), ["targets"])
        (dist,) = lm_losses(model, _batch(tiny_dataset, tokenizer, model, 1.0, distilled), ["targets_distilled"])
        (full_dist,) = lm_losses(model, packed, ["targets_distilled"], fast=False)
    torch.testing.assert_close(real_p, real, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(dist_p, dist, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(full_dist, dist, rtol=RTOL, atol=ATOL)


def test_bf16_setting():
    assert use_bf16("on") and not use_bf16("off")
    assert use_bf16("auto", "meta") is False
