"""train_llm / SoftTrainer on the tiny model: learning, best epoch, early stopping, resume, SOFT mix."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from softrec.config import TrainConfig, load_config
from softrec.models.registry import load_backbone, load_run_model
from softrec.training.batches import Collator, EncodedDataset, encode_samples
from softrec.training.curriculum import Curriculum, Scheduler
from softrec.training.loss import lm_losses
from softrec.training.soft_trainer import SoftTrainer
from softrec.training.trainer import accumulation_steps, train_llm


def tiny_config(**values):
    base = {
        "model.name": "tiny", "train.micro_batch": 8, "train.effective_batch": 8, "train.epochs": 2,
        "train.warmup_steps": 0, "train.learning_rate": 5e-3, "train.checkpoint_every": 0, "train.bf16": "off",
    }
    return load_config(values={**base, **values})


def train(config, dataset, out, **kwargs):
    return train_llm(config, dataset, out, progress=False, **kwargs)


def adapter(out, folder="adapter"):
    return load_file(str(out / folder / "adapter_model.safetensors"))


def lora_size(model, tokenizer):
    """A deterministic 'validation metric' that depends on the weights only."""
    state = get_peft_model_state_dict(model)
    return {"HR@10": float(sum(v.abs().sum() for k, v in state.items() if "lora_B" in k))}


def test_lora_training_lowers_the_loss_and_writes_the_run(tiny_dataset, tmp_path):
    config = tiny_config(**{"train.epochs": 3, "train.learning_rate": 3e-2, "train.validate_every_epoch": False})
    out = tmp_path / "run"
    result = train(config, tiny_dataset, out)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 3 and losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.15, losses
    assert result.best_epoch == 3  # no validator: the last epoch is kept
    info = json.loads((out / "run.json").read_text())
    assert info["base_model"] == "tiny" and info["method"] == "sft" and info["status"] == "finished"
    assert (out / "config.yaml").exists() and (out / "history.json").exists()
    peaks = [r["peak_memory_gib"]["rss"] for r in json.loads((out / "history.json").read_text())]
    assert len(peaks) == 3 and 0.05 < peaks[0] <= peaks[1] <= peaks[2], peaks  # a high-water mark per epoch
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert len(step_rows) == result.global_step == 9
    assert all(r["tokens_per_s"] > 0 and "learning_rate" in r for r in step_rows)
    assert list((out / "logs").glob("events.out.tfevents.*"))
    # the saved adapter reloads and changes the model's output
    model, tokenizer = load_run_model(out)
    base, _ = load_backbone("tiny")
    ids = tokenizer("The Hobbit", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)


def test_best_epoch_is_kept_and_early_stopping_fires(tiny_dataset, tmp_path):
    scores = iter([0.1, 0.5, 0.2, 0.3, 0.9, 0.9])
    snapshots = []

    def validator(model, tokenizer):
        snapshots.append({k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()})
        return {"HR@10": next(scores), "NDCG@10": 0.0}

    config = tiny_config(**{"train.epochs": 6, "train.patience": 2})
    out = tmp_path / "run"
    result = train(config, tiny_dataset, out, validator=validator)
    assert result.best_epoch == 2 and result.best_metric == 0.5
    assert result.stopped_early and len(result.history) == 4  # epochs 3 and 4 without gain
    assert [r["best"] for r in result.history] == [True, True, False, False]
    saved = adapter(out)
    assert saved.keys() == snapshots[1].keys()
    for key, value in snapshots[1].items():
        assert torch.equal(saved[key], value), key
    assert not all(torch.equal(saved[k], v) for k, v in snapshots[3].items())
    assert json.loads((out / "history.json").read_text())[1]["valid"]["HR@10"] == 0.5


@pytest.mark.parametrize(("tie_break", "best_epoch", "epochs_run"), [(False, 1, 3), (True, 3, 4)])
def test_a_tied_validation_resets_patience_only_with_tie_break(tiny_dataset, tmp_path, tie_break, best_epoch, epochs_run):
    """Reference: a tie on HR@10 (better NDCG) neither keeps the epoch nor resets patience."""
    scores = iter([(0.5, 0.1), (0.5, 0.2), (0.5, 0.3), (0.5, 0.3)])

    def validator(model, tokenizer):
        hr, ndcg = next(scores)
        return {"HR@10": hr, "NDCG@10": ndcg}

    config = tiny_config(**{"train.epochs": 4, "train.patience": 2, "train.selection_tie_break": tie_break})
    result = train(config, tiny_dataset, tmp_path / "run", validator=validator)
    assert result.best_epoch == best_epoch and len(result.history) == epochs_run


class Interrupt(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"simulated crash after step {self.at_step}")


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    # 24 samples, micro-batch 8, no accumulation -> 3 optimizer steps per epoch, 6 in all;
    # lora dropout 0.05 is on, so the restored RNG state matters.
    config = tiny_config(**{"train.checkpoint_every": 1})
    straight = train(config, tiny_dataset, tmp_path / "a", validator=lora_size)
    with pytest.raises(KeyboardInterrupt):
        train(config, tiny_dataset, tmp_path / "b", validator=lora_size, callbacks=[Interrupt(5)])
    checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint-4"
    assert checkpoint.is_dir()  # mid-epoch 2
    # resuming needs weights, optimizer and RNG state, not the backbone's tokenizer (33 MB for Gemma)
    assert not list(checkpoint.glob("tokenizer*")) and (checkpoint / "optimizer.pt").is_file()
    resumed = train(config, tiny_dataset, tmp_path / "b", validator=lora_size, resume=True)
    assert resumed.global_step == straight.global_step == 6
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    for key in a:  # same batches, dropout masks and optimizer state: equal up to float noise
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    for ra, rb in zip(straight.history, resumed.history, strict=True):
        assert ra["epoch"] == rb["epoch"]
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-6)
        assert rb["valid"]["HR@10"] == pytest.approx(ra["valid"]["HR@10"], abs=1e-5)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s <= 6] == sorted(s for s in steps if s <= 6)  # no duplicated steps
    # every epoch's adapter kept (the teachers of issue #15), the resumed run's equal to the straight one's
    for epoch in (1, 2):
        a, b = adapter(tmp_path / "a", f"epochs/epoch-{epoch}"), adapter(tmp_path / "b", f"epochs/epoch-{epoch}")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
        assert sorted(p.name for p in (tmp_path / "b" / "epochs" / f"epoch-{epoch}").iterdir()) == [
            "README.md", "adapter_config.json", "adapter_model.safetensors"]  # peft's own; no optimizer state
    first, second = adapter(tmp_path / "a", "epochs/epoch-1"), adapter(tmp_path / "a", "epochs/epoch-2")
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], v) for k, v in adapter(tmp_path / "a").items())  # best epoch: 2 (lora_size grows)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())["artefacts"]
    key = json.loads((tmp_path / "b" / "run.json").read_text())["train_key"]
    assert [manifest[f"epochs/epoch-{e}"]["key"] for e in (1, 2)] == [key, key]


def test_finished_training_is_reused(tiny_dataset, tmp_path, caplog):
    config = tiny_config(**{"train.epochs": 1, "train.validate_every_epoch": False})
    first = train(config, tiny_dataset, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        again = train(config, tiny_dataset, tmp_path / "run")
    assert again.reused and not first.reused and again.best_epoch == first.best_epoch
    kept = tiny_config(**{"train.epochs": 1, "train.validate_every_epoch": False, "train.keep_epoch_adapters": False})
    assert train(kept, tiny_dataset, tmp_path / "run").reused  # where copies go is no training setting
    old_epoch = (tmp_path / "run" / "epochs" / "epoch-1").stat().st_ino
    changed = train(tiny_config(**{"train.epochs": 1, "train.seed": 7, "train.validate_every_epoch": False}),
                    tiny_dataset, tmp_path / "run")
    assert not changed.reused
    assert (tmp_path / "run" / "epochs" / "epoch-1").stat().st_ino != old_epoch  # the new training's own


def _soft_trainer(tmp_path, model, encoded, pad_id):
    """A SoftTrainer whose collator reads lambda where its loss does: from the trainer's curriculum."""
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), report_to="none", use_cpu=True)
    trainer = SoftTrainer(model=model, args=args, train_dataset=EncodedDataset(encoded),
                          data_collator=Collator(pad_id, lambda: trainer.soft_lambda))
    return trainer


def test_soft_lambda_mixes_the_two_targets_in_one_forward(tiny_dataset, tmp_path):
    model, tokenizer = load_backbone("tiny")
    with torch.no_grad():  # a peaked output distribution, so that the two targets' losses differ
        model.lm_head.weight.mul_(50)
    samples = tiny_dataset.split("train")[:6]
    distilled = {s.sample_id: f'"{tiny_dataset.titles[(s.target + 2) % 30]}"' for s in samples}
    encoded = encode_samples(samples, tiny_dataset, tokenizer, distilled=distilled)
    trainer = _soft_trainer(tmp_path, model, encoded, tokenizer.pad_token_id)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))

    def loss_at(lam):
        trainer.curriculum = Curriculum(Scheduler("fixed", fixed_lambda=lam))
        calls.clear()
        batch = trainer.data_collator(encoded)
        with torch.no_grad():
            value = trainer.compute_loss(model, batch)
        assert len(calls) == 1  # one forward whatever lambda is
        return value, batch

    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        (real,) = lm_losses(model, collate(encoded), ["targets"])
        collate.lambda_fn = lambda: 1.0
        (dist,) = lm_losses(model, collate(encoded), ["targets_distilled"])
    sft, batch0 = loss_at(0.0)
    only_distilled, batch1 = loss_at(1.0)
    mixed, _ = loss_at(0.5)
    assert batch0["targets_distilled"] is None and batch1["targets"] is None  # unused half skipped
    assert batch0["input_ids"].shape[1] < _["input_ids"].shape[1]
    torch.testing.assert_close(sft, real, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(only_distilled, dist, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, 0.5 * real + 0.5 * dist, rtol=1e-5, atol=1e-5)
    assert abs(float(real) - float(dist)) > 1e-3  # the test can tell the targets apart


class FakeCurriculum(Curriculum):
    """Sets lambda at epoch start and measures a distance at epoch end, like the SOFT curriculum."""

    def __init__(self):
        super().__init__(Scheduler("sd-only"))
        self.order = []

    def on_train_begin(self, args, state, control, **kwargs):
        pass

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = round(state.epoch or 0) + 1
        self.lambdas[self.epoch] = 1.0 if (state.epoch or 0) < 1 else 0.25

    def on_epoch_end(self, args, state, control, **kwargs):
        self.order.append("curriculum")
        self.distances[round(state.epoch)] = 1.5


def test_soft_training_with_a_curriculum_callback(tiny_dataset, tmp_path):
    distilled = {s.sample_id: '"Dune Messiah"' for s in tiny_dataset.split("train")}
    curriculum = FakeCurriculum()

    def validator(model, tokenizer):
        curriculum.order.append("validation")
        return {"HR@10": 0.0}

    config = tiny_config(**{"train.method": "soft"})
    result = train(config, tiny_dataset, tmp_path / "run", distilled=distilled,
                   curriculum=curriculum, validator=validator)
    first, second = result.history
    assert curriculum.order == ["curriculum", "validation"] * 2
    assert first["lambda"] == 1.0 and "loss_real" not in first and first["loss_distilled"] > 0
    assert second["lambda"] == 0.25 and second["loss_real"] > 0 and second["loss_distilled"] > 0
    assert second["distance"] == 1.5
    assert second["train_loss"] == pytest.approx(0.75 * second["loss_real"] + 0.25 * second["loss_distilled"])


def test_full_fine_tuning_saves_model_dir(tiny_dataset, tmp_path):
    config = tiny_config(**{"train.epochs": 1, "train.lora.enabled": False, "train.validate_every_epoch": False})
    result = train(config, tiny_dataset, tmp_path / "run")
    assert result.weights_dir.name == "model" and (result.weights_dir / "model.safetensors").exists()
    assert not (tmp_path / "run" / "epochs").exists()  # whole models per epoch only with train.keep_epoch_models
    model, _ = load_run_model(tmp_path / "run")
    base, _ = load_backbone("tiny")
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)


def test_accumulation_is_capped_at_the_dataset(caplog):
    train_cfg = TrainConfig(effective_batch=256, micro_batch=8)
    assert accumulation_steps(train_cfg, 4096) == 32
    assert accumulation_steps(train_cfg, 4096, world_size=2) == 16
    with caplog.at_level(logging.WARNING):
        assert accumulation_steps(train_cfg, 64) == 8
    assert "exceeds the 64 training samples" in caplog.text


def test_a_tie_on_the_selection_metric_is_no_gain_by_default():
    """Reference (train.py lines 256-264): only a strictly higher HR@10 keeps an epoch/resets patience."""
    from softrec.training.selection import selection_key

    tied = {"HR@10": 1 / 128, "NDCG@10": 0.003, "validity": 0.33}
    assert not selection_key({**tied, "NDCG@10": 0.9, "validity": 1.0}, "HR@10") > selection_key(tied, "HR@10")
    assert selection_key({**tied, "HR@10": 2 / 128}, "HR@10") > selection_key(tied, "HR@10")


def test_ties_on_the_selection_metric_go_to_ndcg_then_validity_with_tie_break():
    from softrec.training.selection import selection_key

    def key(metrics):
        return selection_key(metrics, "HR@10", tie_break=True)

    tied = {"HR@10": 1 / 128, "NDCG@10": 0.003, "validity": 0.33}
    assert key({**tied, "validity": 0.88}) > key(tied)
    assert key({**tied, "NDCG@10": 0.004, "validity": 0.1}) > key(tied)
    assert key({**tied, "HR@10": 0.0, "validity": 1.0}) < key(tied)
    assert not key(tied) > key(dict(tied))  # equal is no gain
