"""LLaRA backbone: item tokens carry the projected SASRec embedding into every path (training batch,
generation, reload), gradients reach the projector, titles (grounding) are untouched."""

from __future__ import annotations

import json

import pytest
import torch

from softrec.config import load_config
from softrec.data.prompts import build_prompt
from softrec.models import llara
from softrec.models.registry import load_backbone, load_run_model
from softrec.training import llara_items


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models thrash on shared cores
    yield
    torch.set_num_threads(previous)


def _llara_tiny(n_items: int = 30, seed: int = 0):
    """A fresh tiny backbone (attach mutates model and tokenizer) with a random item table."""
    model, tokenizer = load_backbone("tiny")
    items = torch.randn(n_items, 64, generator=torch.Generator().manual_seed(seed))
    return llara.attach(model, tokenizer, items)


def _prompt(dataset, tokenizer, history):
    titles = [dataset.titles[i] for i in history]
    return build_prompt(titles, dataset.domain, "alpaca", tokenizer, item_ids=history)


def _last_logits(model, tokenizer, prompt):
    with torch.no_grad():
        return model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]


def test_prompt_has_one_item_token_per_title_and_titles_tokenize_as_before(tiny_dataset):
    model, tokenizer = _llara_tiny()
    plain = load_backbone("tiny")[1]
    prompt = _prompt(tiny_dataset, tokenizer, [3, 7])
    # reference (inference_llara.py line 42): a space between the quoted title and its placeholder
    assert f'"{tiny_dataset.titles[3]}" [HistoryEmb_3], "{tiny_dataset.titles[7]}" [HistoryEmb_7]' in prompt
    ids = tokenizer(prompt)["input_ids"]
    offset = tokenizer.convert_tokens_to_ids("[HistoryEmb_0]")
    assert offset >= model.config.vocab_size  # never scored by the LM head, so never generated
    assert [i - offset for i in ids if i >= offset] == [3, 7]
    # the same prompt without item ids, and every title, tokenize exactly as on the plain tokenizer
    assert build_prompt(["Dune"], tiny_dataset.domain, "alpaca", tokenizer) == build_prompt(
        ["Dune"], tiny_dataset.domain, "alpaca", plain)
    titles = list(tiny_dataset.titles)
    assert tokenizer(titles)["input_ids"] == plain(titles)["input_ids"]


def test_item_embedding_changes_the_logits_and_nothing_else_does(tiny_dataset):
    model, tokenizer = _llara_tiny()
    a = _last_logits(model, tokenizer, _prompt(tiny_dataset, tokenizer, [3, 5]))
    b = _last_logits(model, tokenizer, _prompt(tiny_dataset, tokenizer, [3, 5]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # same titles, different item token -> different response logits
    titles = [tiny_dataset.titles[i] for i in (3, 5)]
    other = build_prompt(titles, tiny_dataset.domain, "alpaca", tokenizer, item_suffix=[" [HistoryEmb_3]", " [HistoryEmb_9]"])
    c = _last_logits(model, tokenizer, other)
    assert (a - c).abs().max() > 1e-4
    # and changing the frozen table row of item 5 changes them as well
    with torch.no_grad():
        llara.projector_of(model).items[5] += 1.0
    d = _last_logits(model, tokenizer, _prompt(tiny_dataset, tokenizer, [3, 5]))
    assert (a - d).abs().max() > 1e-4


def test_gradients_reach_the_projector_but_not_the_item_table(tiny_dataset):
    from softrec.training.batches import Collator, encode_samples
    from softrec.training.loss import lm_losses
    from softrec.training.trainer import prepare_model

    model, tokenizer = _llara_tiny()
    peft_model = prepare_model(model, load_config(values={"model.name": "tiny"}))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("llara_projector" in n and "mlp" in n for n in trainable)
    assert not any(n.endswith("items") for n in trainable)
    encoded = encode_samples(tiny_dataset.split("train")[:4], tiny_dataset, tokenizer, max_length=200)
    assert all(any(i >= model.config.vocab_size for i in e.prompt_ids) for e in encoded)
    batch = Collator(tokenizer.pad_token_id)(encoded)
    (loss,) = lm_losses(peft_model, batch, ["targets"])
    loss.backward()
    projector = llara.projector_of(peft_model)
    for layer in (projector.mlp[0], projector.mlp[2]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_saved_run_reloads_with_identical_logits_and_generations(tiny_dataset, tmp_path):
    from softrec.inference.generate import generate_beams
    from softrec.runs import RunDir
    from softrec.training.checkpoints import weights_saver
    from softrec.training.trainer import prepare_model

    model, tokenizer = _llara_tiny(seed=1)
    peft_model = prepare_model(model, load_config(values={"model.name": "tiny"}))
    with torch.no_grad():  # move the projector and LoRA away from their initial values
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    peft_model.eval()
    run_dir = tmp_path / "run"
    weights_saver(run_dir, lora=True)(peft_model, tokenizer)
    RunDir(run_dir).update_info(base_model="tiny", method="sft", backbone="llara")
    assert (run_dir / "adapter" / llara.WEIGHTS_FILE).exists()

    loaded, loaded_tokenizer = load_run_model(run_dir)
    prompts = [_prompt(tiny_dataset, tokenizer, s.history) for s in tiny_dataset.split("test")[:3]]
    for prompt in prompts:
        torch.testing.assert_close(_last_logits(loaded, loaded_tokenizer, prompt),
                                   _last_logits(peft_model, tokenizer, prompt), rtol=0, atol=0)
    kwargs = {"num_beams": 2, "max_new_tokens": 5, "batch_size": 2}
    assert generate_beams(loaded, loaded_tokenizer, prompts, **kwargs) == generate_beams(
        peft_model, tokenizer, prompts, **kwargs)


def test_generation_with_prefilled_cache_sees_the_item_tokens(tiny_dataset):
    """Beam search (prefill + cache, trie-constrained) projects every history item once and equals
    plain constrained `generate` on LLaRA prompts."""
    from softrec.evaluation.evaluate import title_trie
    from softrec.inference.generate import generate_baseline, generate_beam_ids
    from softrec.inference.trie import DictTrie

    model, tokenizer = _llara_tiny(seed=2)
    projected: list[int] = []
    llara.projector_of(model).register_forward_hook(lambda m, args, out: projected.extend(args[0].tolist()))
    samples = tiny_dataset.split("test")[:4]
    prompts = [_prompt(tiny_dataset, tokenizer, s.history) for s in samples]
    trie = title_trie(tokenizer, tiny_dataset.titles)
    kwargs = {"num_beams": 3, "max_new_tokens": 8, "batch_size": 2}
    fast = generate_beam_ids(model, tokenizer, prompts, constrain_to=trie, **kwargs)
    # prefill only, never per beam or per decoding step: each history item at most as often as the
    # histories hold it (a template prefix that prompts of a batch share is run once for all of them)
    from collections import Counter

    histories = Counter(i for s in samples for i in s.history)
    assert set(projected) == set(histories) and not Counter(projected) - histories
    full = generate_baseline(model, tokenizer, prompts, trie=DictTrie.from_titles(tokenizer, tiny_dataset.titles),
                             **kwargs)
    assert [b.token_ids for b in fast] == [b.token_ids for b in full]
    vocab = model.config.vocab_size
    assert all(t < vocab for b in fast for row in b.token_ids for t in row)


def test_sasrec_run_of_other_data_is_refused(tiny_dataset, tmp_path):
    from softrec.errors import UserError
    from softrec.runs import RunDir

    run = tmp_path / "sasrec"
    RunDir(run).update_info(method="sasrec", dataset_key="something-else")
    config = load_config(values={"model.backbone": "llara", "model.llara_sasrec_run": str(run)})
    with pytest.raises(UserError, match="other data"):
        llara_items.sasrec_items(config, tiny_dataset, tmp_path / "out")


FAST = ["--micro-batch", "8", "--effective-batch", "8", "--set", "train.bf16=off",
        "--set", "classic.epochs=2", "--set", "eval.num_beams=2", "--set", "eval.max_new_tokens=8"]


def test_llara_sft_cli_trains_sasrec_then_the_llm_and_evaluates(tiny_dataset, tmp_path, capsys):
    from softrec.cli import main

    out = tmp_path / "llara"
    code = main(["train", "--method", "sft", "--backbone", "llara", "--data", str(tiny_dataset.path),
                 "--model", "tiny", "--out", str(out), "--epochs", "2", "--valid-samples", "4", *FAST])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["backbone"] == "llara" and info["status"] == "finished"
    assert json.loads((out / "sasrec" / "run.json").read_text())["method"] == "sasrec"
    assert (out / "adapter" / llara.WEIGHTS_FILE).exists()
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all("HR@10" in h["valid"] for h in history)

    assert main(["evaluate", "--run", str(out), "--split", "test", "--grounding", "trie"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(tiny_dataset.split("test")) and 0 <= metrics["HR@10"] <= 1
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["n"] and all(len(r["ranked"]) > 0 for r in rows)


def test_llara_sft_distill_soft_chain_through_the_cli(tiny_dataset, tmp_path, capsys):
    """SOFT with the LLaRA backbone: distillation and the curriculum probe read LLaRA prompts (the
    projector sees every probe/distill history), checkpoints carry the projector for --resume."""
    from safetensors import safe_open

    from softrec.cli import main

    projected: list[int] = []
    original = llara.ItemProjector.forward

    def spy(self, item_ids):
        if not torch.is_grad_enabled():  # generation (distill, probe, validation), not training
            projected.extend(item_ids.tolist())
        return original(self, item_ids)

    data = ["--data", str(tiny_dataset.path), "--model", "tiny"]
    sft, soft = tmp_path / "sft", tmp_path / "soft"
    common = [*data, "--backbone", "llara", "--epochs", "1", *FAST, "--set", "train.validate_every_epoch=false"]
    assert main(["train", "--method", "sft", "--out", str(sft), *common]) == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llara.ItemProjector, "forward", spy)
        assert main(["distill", "--run", str(sft), "--data", str(tiny_dataset.path), "--beams", "2",
                     "--max-new-tokens", "4"]) == 0
    train_items = sorted(i for s in tiny_dataset.split("train") for i in s.history)
    assert sorted(projected) == train_items
    projected.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llara.ItemProjector, "forward", spy)
        code = main(["train", "--method", "soft", "--distilled", str(sft), "--out", str(soft), *common,
                     "--set", "soft.probe_size=4", "--set", "soft.distill_beams=2",
                     "--set", "soft.distill_max_new_tokens=4", "--sasrec-run", str(sft / "sasrec")])
    assert code == 0, capsys.readouterr().err
    assert projected, "the SOFT probe generated without the item projector"
    assert not (soft / "sasrec").exists()  # the given SASRec run was used
    checkpoint = next((soft / "checkpoints").glob("checkpoint-*"))
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as fh:
        assert any("llara_projector" in key and "mlp" in key for key in fh.keys())
    assert main(["evaluate", "--run", str(soft), "--split", "test"]) == 0
    assert json.loads((soft / "metrics.json").read_text())["n"] == len(tiny_dataset.split("test"))


def test_full_fine_tuning_saves_and_reloads_the_projector(tiny_dataset, tmp_path):
    from softrec.runs import RunDir
    from softrec.training.checkpoints import weights_saver
    from softrec.training.trainer import prepare_model

    model, tokenizer = _llara_tiny(seed=3)
    model = prepare_model(model, load_config(values={"model.name": "tiny", "train.lora.enabled": False}))
    assert all(p.requires_grad for p in llara.projector_of(model).mlp.parameters())
    with torch.no_grad():
        llara.projector_of(model).mlp[2].bias.add_(0.3)
    model.eval()
    run_dir = tmp_path / "full"
    weights_saver(run_dir, lora=False)(model, tokenizer)
    RunDir(run_dir).update_info(base_model="tiny", method="sft", backbone="llara")
    loaded, loaded_tokenizer = load_run_model(run_dir)
    prompt = _prompt(tiny_dataset, tokenizer, [4, 8, 15])
    torch.testing.assert_close(_last_logits(loaded, loaded_tokenizer, prompt), _last_logits(model, tokenizer, prompt),
                               rtol=0, atol=0)


def test_torchrun_without_a_sasrec_run_is_refused(tiny_dataset, tmp_path, monkeypatch):
    from softrec.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--sasrec-run"):
        llara_items.sasrec_items(load_config(values={"model.backbone": "llara"}), tiny_dataset, tmp_path / "out")
