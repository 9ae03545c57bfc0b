"""`softrec bench speed`: one quick run on the tiny model, plus the FLOP formula and the matmul peak."""

from __future__ import annotations

import contextlib
import json
import statistics

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
    assert all(section in results for section in SECTIONS)
    _check_arithmetic(results)
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
    bf16 = results["train"]["bf16_autocast"]  # as measured, for each side (the plain side was once hard-coded)
    assert f"bf16 autocast: softrec {bf16['softrec']}, plain {bf16['plain']}" in markdown


def _median(series):
    assert series["median"] == statistics.median(series["repeats"])
    return series["median"]


def _check_arithmetic(results):
    """Every derived number of results.json recomputed from the raw ones it is derived from, plus
    the orderings that hold whatever the machine's speed (the old checks were `x > 0`)."""
    train, mfu = results["train"], results["mfu"]
    for setup in ("softrec", "plain", "soft"):
        s = train[setup]
        # quick: 4 samples in micro-batches of 2 = 2 steps, the first a warm-up
        assert s["steps"] == len(s["tokens_per_s"]["repeats"]) == len(s["step_seconds"]["repeats"]) == 1
        _median(s["tokens_per_s"]), _median(s["step_seconds"])
        assert s["seconds"] == pytest.approx(sum(s["step_seconds"]["repeats"]))
        assert s["aggregate_tokens_per_s"] == pytest.approx(s["tokens"] / s["seconds"])
        assert s["tokens_per_s"]["repeats"] == pytest.approx([s["tokens"] / s["seconds"]])
    assert train["ratio"] == pytest.approx(_median(train["softrec"]["tokens_per_s"]) / _median(train["plain"]["tokens_per_s"]))
    assert train["soft_step_ratio"] == pytest.approx(
        _median(train["soft"]["step_seconds"]) / _median(train["softrec"]["step_seconds"]))
    assert train["soft"]["tokens"] > train["softrec"]["tokens"]  # SOFT's rows also hold the distilled target

    for setup in ("softrec", "plain"):
        m = mfu[setup]
        assert m["peak_dtype"] == ("bfloat16" if train["bf16_autocast"][setup] else "float32")
        peak = mfu["peak_gflops"][m["peak_dtype"]]["median"]
        seconds = train[setup]["step_seconds"]["repeats"]
        model = m["model_gflop_per_step"]["repeats"]
        assert m["achieved_gflops"]["repeats"] == pytest.approx([f / t for f, t in zip(model, seconds, strict=True)])
        assert m["mfu"]["repeats"] == pytest.approx([a / peak for a in m["achieved_gflops"]["repeats"]])
        # what a setup executes (padding, plain's head over every position) is never less than the model's FLOPs
        assert all(e >= f for e, f in zip(m["executed_gflop_per_step"]["repeats"], model, strict=True))
    assert mfu["softrec"]["shape"] == mfu["plain"]["shape"]  # the same LoRA model on both sides
    assert mfu["softrec"]["shape"]["body"] == 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)  # tiny: 2 layers
    assert mfu["ratio"] == pytest.approx(_median(mfu["softrec"]["mfu"]) / _median(mfu["plain"]["mfu"]))
    # the peak is timed for the dtypes the steps ran in (fp32 always), never for an unused one
    used = {"bfloat16" if train["bf16_autocast"][s] else "float32" for s in ("softrec", "plain")} | {"float32"}
    assert set(mfu["peak_gflops"]) == used
    for dtype in used:
        _median(mfu["peak_gflops"][dtype])

    epoch = results["soft_epoch"]
    assert len(epoch["sft"]["epoch_seconds"]["repeats"]) == len(epoch["soft"]["epoch_seconds"]["repeats"]) == 1
    assert epoch["ratio"] == pytest.approx(_median(epoch["soft"]["epoch_seconds"]) / _median(epoch["sft"]["epoch_seconds"]))
    assert epoch["pipeline_ratio"] == pytest.approx(
        (epoch["distillation"]["seconds"] + epoch["soft"]["run_seconds"]) / epoch["sft"]["run_seconds"])
    assert epoch["distillation"]["prompts_per_s"] == pytest.approx(epoch["samples"] / epoch["distillation"]["seconds"])
    for method in ("sft", "soft"):  # an epoch is a part of its run
        assert max(epoch[method]["epoch_seconds"]["repeats"]) <= epoch[method]["run_seconds"]

    decoding = results["decoding"]
    assert len(decoding["softrec"]["prompts_per_s"]["repeats"]) == 2  # 2 prompts in batches of 1
    assert decoding["ratio"] == pytest.approx(
        _median(decoding["softrec"]["prompts_per_s"]) / _median(decoding["baseline"]["prompts_per_s"]))
    # every prompt returns all its beams; some are complete catalogue titles (max_new_tokens may cut others)
    valid, total = map(int, decoding["complete_titles"].split("/"))
    assert total == decoding["beams"] * 2 and 0 < valid <= total

    evaluation = results["evaluation"]
    whole, decoding_alone = (evaluation[k]["prompts_per_s"]["repeats"] for k in ("softrec", "decoding_only"))
    assert evaluation["ratio"] == pytest.approx(statistics.median(whole) / statistics.median(decoding_alone))
    # decoding is timed inside each evaluate_model call: the whole call is never faster than it
    assert all(w <= d for w, d in zip(whole, decoding_alone, strict=True))


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
def test_matmul_peak_runs_in_each_dtype(dtype):
    peak = matmul_peak(dtype, size=128, repeats=2, min_seconds=0.01)
    assert len(peak["repeats"]) == 2 and peak["dtype"] == str(dtype)[6:] and peak["size"] == 128
    assert _median(peak) == statistics.median(peak["repeats"]) and peak["matmuls_per_repeat"] >= 1


def test_matmul_peak_counts_2n3_flops_per_matmul(monkeypatch):
    """With a stopwatch that reads fixed times, the rate is exact: the warm-up matmul 'takes' 1 ms, so
    0.3 s needs 300 matmuls per repeat; each repeat 'takes' 0.5 s; 2 * 64^3 FLOPs a matmul."""
    from softrec.bench.speed import flops

    times = iter([1e-3, 0.5, 0.5, 0.5])

    @contextlib.contextmanager
    def fake_stopwatch():
        out = []
        yield out
        out.append(next(times))

    monkeypatch.setattr(flops, "stopwatch", fake_stopwatch)
    peak = flops.matmul_peak(torch.float32, size=64, repeats=3, min_seconds=0.3, device=torch.device("cpu"))
    assert peak["matmuls_per_repeat"] == 300
    assert peak["repeats"] == pytest.approx([2 * 64**3 * 300 / 0.5 / 1e9] * 3)
