"""`softrec bench speed`: one quick run on the tiny model, plus the FLOP formula and the matmul peak."""

from __future__ import annotations

import json

import pytest
import torch

from softrec.bench.speed.flops import FlopShape, matmul_peak
from softrec.bench.speed.training import batch_step

SECTIONS = ("train", "soft_epoch", "decoding", "evaluation", "mfu")


def test_quick_run_writes_every_section(tmp_path, tiny_dataset):
    from softrec.cli import main

    out = tmp_path / "out"
    status = main(["bench", "speed", "--model", "tiny", "--quick", "--data", str(tiny_dataset.path),
                   "--out", str(out), "--work", str(tmp_path / "work"),
                   # a random tiny model never stops early: shorter generations keep the test fast
                   "--set", "eval.max_new_tokens=16", "--set", "soft.distill_max_new_tokens=16"])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    assert results["machine"]["torch_threads"] >= 1 and results["machine"]["packages"]["torch"]
    assert results["command"].startswith("softrec bench speed --out")
    medians = {
        "train": [results["train"][s]["tokens_per_s"]["median"] for s in ("softrec", "plain")]
        + [results["train"]["soft"]["step_seconds"]["median"]],
        "soft_epoch": [results["soft_epoch"][m]["epoch_seconds"]["median"] for m in ("sft", "soft")]
        + [results["soft_epoch"]["distillation"]["prompts_per_s"]],
        "decoding": [results["decoding"][d]["prompts_per_s"]["median"] for d in ("softrec", "baseline")],
        "evaluation": [results["evaluation"][d]["prompts_per_s"]["median"] for d in ("softrec", "decoding_only")],
        "mfu": [results["mfu"][s]["mfu"]["median"] for s in ("softrec", "plain")]
        + [results["mfu"]["peak_gflops"][d]["median"] for d in ("float32", "bfloat16")],
    }
    for section in SECTIONS:
        assert all(m is not None and m > 0 for m in medians[section]), section
        assert results[section]["ratio"] > 0, section
    assert results["train"]["soft_step_ratio"] > 0 and results["soft_epoch"]["pipeline_ratio"] > 0
    # every prompt's ranking agrees between the two constrained decoders
    assert results["decoding"]["identical_rankings"] == results["decoding"]["prompts"] == 2
    # SOFT measured d_0 before training and d_1 after its one epoch
    assert len(results["soft_epoch"]["soft"]["probe_seconds"]) == 2
    assert results["soft_epoch"]["soft"]["lambdas"] == [1.0]
    markdown = (out / "results.md").read_text()
    for row in ("training tokens/s", "SOFT epoch vs SFT epoch", "constrained decoding prompts/s",
                "evaluation prompts/s", "MFU of a training step", "matmul peak"):
        assert row in markdown
    assert results["command"] in markdown


def test_step_flops_on_a_known_shape():
    # 2-layer LoRA model: body N = 1000, LoRA 10, head V*d = 500, L*d_attn = 8
    shape = FlopShape(body=1000, lora=10, head=500, attention=8, full_finetune=False)
    # two rows of 3 and 5 tokens, 4 labelled positions
    assert shape.step_flops(tokens=8, labelled=4, squares=9 + 25) == 4 * 1000 * 8 + 6 * 10 * 8 + 4 * 500 * 4 + 6 * 8 * 34
    full = FlopShape(body=1000, lora=0, head=500, attention=8, full_finetune=True)
    assert full.step_flops(8, 4, 34) == 6 * 1000 * 8 + 6 * 500 * 4 + 6 * 8 * 34


def test_model_shape_counts_the_tiny_model(tiny_backbone):
    from peft import LoraConfig, get_peft_model

    from softrec.models.tiny import tiny_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    shape = FlopShape.of(model)
    config = model.get_base_model().config  # hidden 64, intermediate 128, 2 layers, 4 heads, 2 kv heads
    head_dim = 64 // 4
    per_layer = 64 * 64 + 2 * 64 * 2 * head_dim + 64 * 64 + 3 * 64 * 128  # q, k+v, o, gate/up/down
    assert shape.body == config.num_hidden_layers * per_layer
    assert shape.lora == 2 * (4 * (64 + 64) + 4 * (64 + 32))  # per layer, r=4: q 64->64, v 64->32
    assert shape.head == config.vocab_size * 64
    assert shape.attention == 2 * 4 * head_dim and not shape.full_finetune


def test_batch_step_counts_tokens_labels_and_squares():
    batch = {
        "input_ids": torch.zeros(2, 8, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 3 + [0] * 5, [1] * 5 + [0] * 3]),
        "labels": torch.tensor([[-100, -100, 7] + [-100] * 5, [-100, -100, 5, 6, 7] + [-100] * 3]),
    }
    step = batch_step(batch)
    assert (step.tokens, step.labelled, step.squares, step.rows, step.width) == (8, 4, 34, 2, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_positive(dtype):
    peak = matmul_peak(dtype, size=128, repeats=2, min_seconds=0.01)
    assert len(peak["repeats"]) == 2 and peak["median"] > 0 and peak["dtype"] == str(dtype)[6:]
