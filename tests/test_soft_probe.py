"""The SOFT probe (d_k) and the self-distilled targets, checked against hand computations.

Issue #14 item 1: the probe must be drawn from the samples the run trains on (the reference draws it
from its training file, inference.py lines 35 and 59-60), never from the whole prepared train split.
"""

from __future__ import annotations

import json

import pytest
import torch

from softrec.cli import main
from softrec.config import load_config
from softrec.data.prompts import build_prompt
from softrec.data.subsets import training_samples
from softrec.training.curriculum import probe_distance, probe_samples

BEAMS, NEW_TOKENS = 2, 6


def _config(**values):
    base = {"model.name": "tiny", "soft.distill_beams": BEAMS, "soft.distill_max_new_tokens": NEW_TOKENS,
            "eval.batch_size": 4, "soft.probe_seed": 7}
    return load_config(values={**base, **values})


def _prompt(dataset, sample):
    return build_prompt([dataset.titles[i] for i in sample.history], dataset.domain)


def _top_beam(model, tokenizer, prompt):
    """transformers' own beam search on ONE prompt (no batching, no padding): the top beam's text."""
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, num_beams=BEAMS, num_return_sequences=1, max_new_tokens=NEW_TOKENS,
                             do_sample=False, early_stopping=False, length_penalty=1.0,  # GenerationConfig defaults, as the reference (inference.py:90-99)
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _embed_one(model, tokenizer, text):
    """Last layer's hidden state at the last token of `text` alone (BIGRec grounding, encode.py)."""
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states[-1][0, -1].float()


def test_probe_is_drawn_from_the_trained_subset_only(tiny_dataset):
    config = _config(**{"train.train_samples": 10, "soft.probe_size": 4})
    trained = {s.sample_id for s in training_samples(tiny_dataset, config)}
    assert len(trained) == 10 < len(tiny_dataset.split("train"))
    measure = probe_distance(tiny_dataset, config)
    assert len(measure.probe_ids) == 4 and set(measure.probe_ids) <= trained
    # a probe as large as the subset is exactly the subset (the old code drew from all 24 samples)
    whole = probe_distance(tiny_dataset, _config(**{"train.train_samples": 10, "soft.probe_size": 10}))
    assert set(whole.probe_ids) == trained
    # fixed: the same seed gives the same probe, another seed (almost surely) another one
    assert probe_distance(tiny_dataset, config).probe_ids == measure.probe_ids
    samples = training_samples(tiny_dataset, config)
    assert [s.sample_id for s in probe_samples(samples, 4, 7)] == measure.probe_ids


def test_probe_distance_equals_a_hand_computation(tiny_dataset, tiny_backbone):
    model, tokenizer = tiny_backbone
    config = _config(**{"train.train_samples": 12, "soft.probe_size": 5})
    measure = probe_distance(tiny_dataset, config)
    d = measure(model, tokenizer)

    by_id = {s.sample_id: s for s in tiny_dataset.split("train")}
    distances = []
    for sample_id in measure.probe_ids:
        sample = by_id[sample_id]
        text = _top_beam(model, tokenizer, _prompt(tiny_dataset, sample))
        query = text.strip('"').strip(" ") or " "  # reference rule (evaluate_batch.py line 88); " " stands in for ""
        target = tiny_dataset.titles[sample.target]
        distances.append(torch.dist(_embed_one(model, tokenizer, query), _embed_one(model, tokenizer, target)))
    assert d > 0
    assert d == pytest.approx(torch.stack(distances).mean().item(), rel=1e-4)


def test_each_distilled_target_is_the_top_beam_of_its_own_prompt(tiny_dataset, tmp_path):
    from peft import LoraConfig, get_peft_model

    from softrec.inference.distill import distill
    from softrec.models.registry import load_backbone, load_run_model
    from softrec.runs import RunDir

    base, _ = load_backbone("tiny")
    run_dir = tmp_path / "sft"
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, seeded (independent of test order), so that the
        for index, (name, parameter) in enumerate(peft_model.named_parameters()):  # targets come from it
            if "lora_" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(index))
    peft_model.save_pretrained(run_dir / "adapter")
    RunDir(run_dir).update_info(base_model="tiny", method="sft")

    config = _config(**{"train.train_samples": 9})
    rows = [json.loads(line) for line in distill(run_dir, tiny_dataset, config, progress=False).read_text().splitlines()]
    trained = training_samples(tiny_dataset, config)
    assert [r["sample_id"] for r in rows] == [s.sample_id for s in trained]
    assert sum(bool(r["target_text"]) for r in rows) >= len(rows) // 2  # not vacuous: real generations
    model, tokenizer = load_run_model(run_dir)
    by_id = {s.sample_id: s for s in trained}
    for row in rows:
        assert row["target_text"] == _top_beam(model, tokenizer, _prompt(tiny_dataset, by_id[row["sample_id"]])), row


def test_soft_run_records_its_training_samples_and_a_probe_among_them(tiny_dataset, tmp_path, capsys, monkeypatch):
    """`softrec train --method soft --train-samples N`: curriculum.json's probe ids are all trained on;
    the next alpha of a sweep reuses d_0 and says so."""
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    common = ["--data", str(tiny_dataset.path), "--model", "tiny", "--epochs", "1", "--train-samples", "10",
              "--micro-batch", "5", "--effective-batch", "5", "--no-preflight",
              "--set", "eval.num_beams=2", "--set", "eval.max_new_tokens=4", "--set", "train.bf16=off",
              "--set", "soft.distill_beams=2", "--set", "soft.distill_max_new_tokens=4", "--set", "soft.probe_size=4"]
    sft, soft = tmp_path / "sft", tmp_path / "soft"
    assert main(["train", "--method", "sft", "--out", str(sft), *common]) == 0
    assert main(["distill", "--run", str(sft), "--data", str(tiny_dataset.path),
                 "--set", "train.train_samples=10", "--set", "soft.distill_beams=2",
                 "--set", "soft.distill_max_new_tokens=4", "--no-preflight"]) == 0
    assert main(["train", "--method", "soft", "--distilled", str(sft), "--out", str(soft), *common]) == 0
    trained = json.loads((soft / "train_samples.json").read_text())
    curriculum = json.loads((soft / "curriculum.json").read_text())
    assert len(trained) == 10 and len(curriculum["probe"]) == 4
    assert set(curriculum["probe"]) <= set(trained)
    assert set(curriculum["distances"]) == {"0", "1"} and "d0_reused_from" not in curriculum
    other = tmp_path / "soft-a10"
    assert main(["train", "--method", "soft", "--alpha", "10", "--distilled", str(sft), "--out", str(other), *common]) == 0
    reused = json.loads((other / "curriculum.json").read_text())
    assert reused["distances"]["0"] == curriculum["distances"]["0"] and "probe-d0" in reused["d0_reused_from"]


def test_d0_is_measured_once_per_base_probe_and_decoding_then_read_from_the_cache(tiny_dataset, tiny_backbone,
                                                                                 tmp_path, monkeypatch):
    """Every run of an alpha sweep measures d_0 on the same untuned model: the second reads it back
    (the same value, no decoding); other decoding settings or other base weights measure again."""
    import copy

    from softrec.inference import generate

    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_backbone
    config = _config(**{"train.train_samples": 12, "soft.probe_size": 5})
    first = probe_distance(tiny_dataset, config).untuned
    d0 = first(model, tokenizer)
    assert first.reused_from is None and d0 > 0

    real, calls = generate.generate_beams, []
    monkeypatch.setattr(generate, "generate_beams", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = probe_distance(tiny_dataset, config).untuned
    assert again(model, tokenizer) == d0 and calls == [] and again.reused_from.startswith(str(tmp_path / "cache"))

    longer = probe_distance(tiny_dataset, _config(**{"train.train_samples": 12, "soft.probe_size": 5,
                                                     "soft.distill_max_new_tokens": NEW_TOKENS + 2})).untuned
    longer(model, tokenizer)
    assert longer.reused_from is None and calls == [1]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_output_embeddings().weight.mul_(1.5)
        other.model.norm.weight.add_(0.5)
    changed = probe_distance(tiny_dataset, config).untuned
    changed(other, tokenizer)
    assert changed.reused_from is None and calls == [1, 1]
