"""Teachers other than the SFT run's best adapter (issue #15): `softrec distill --epoch N / --adapter DIR
--out TEACHER_DIR` copies the adapter into a run directory of its own, distils there, and SOFT trains on it."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from softrec.cli import main

SMALL = ["--num-beams", "2", "--max-new-tokens", "6", "--no-preflight", "--set", "eval.batch_size=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch LoRA SFT run on the tiny model (epochs/epoch-1 and epoch-2 kept)."""
    from conftest import make_tiny_dataset

    from softrec.config import load_config
    from softrec.training.trainer import train_llm

    root = tmp_path_factory.mktemp("teacher")
    dataset = make_tiny_dataset(root / "prepared")
    config = load_config(values={
        "model.name": "tiny", "train.micro_batch": 8, "train.effective_batch": 8, "train.epochs": 2,
        "train.warmup_steps": 0, "train.learning_rate": 5e-3, "train.checkpoint_every": 0, "train.bf16": "off",
        "train.validate_every_epoch": False,
    })
    train_llm(config, dataset, root / "sft", progress=False)
    return root / "sft", dataset


def distill(run, dataset, *extra):
    return main(["distill", "--run-dir", str(run), "--data", str(dataset.path), *SMALL, *extra])


def test_epoch_teacher_is_a_run_soft_trains_on_and_a_rerun_reuses_it(trained, tmp_path, monkeypatch):
    from softrec.inference import distill as stage
    from softrec.models.registry import check_run_weights

    sft, dataset = trained
    teacher = tmp_path / "teacher-1"
    sft_manifest = (sft / "manifest.json").read_bytes()
    assert distill(sft, dataset, "--epoch", "1", "--out", str(teacher)) == 0
    assert (sft / "manifest.json").read_bytes() == sft_manifest and not (sft / "distilled.jsonl").exists()
    copied = load_file(str(teacher / "adapter" / "adapter_model.safetensors"))
    epoch_1 = load_file(str(sft / "epochs" / "epoch-1" / "adapter_model.safetensors"))
    assert copied.keys() == epoch_1.keys() and all((copied[k] == epoch_1[k]).all() for k in copied)
    info = json.loads((teacher / "run.json").read_text())
    assert info["teacher_of"] == str(sft.resolve()) and info["teacher_epoch"] == 1 and info["teacher_adapter"] is None
    assert info["base_model"] == "tiny" and "best_epoch" not in info
    check_run_weights(teacher, info)  # what evaluate and load_run_model require
    targets = stage.load_distilled(teacher)
    assert sorted(targets) == sorted(s.sample_id for s in dataset.split("train"))

    # the same command again: nothing copied, nothing generated
    stamp = (teacher / "adapter").stat().st_ino, (teacher / "distilled.jsonl").stat().st_mtime_ns
    monkeypatch.setattr(stage, "_generate_targets", lambda *a, **k: pytest.fail("regenerated"))
    assert distill(sft, dataset, "--epoch", "1", "--out", str(teacher)) == 0
    assert ((teacher / "adapter").stat().st_ino, (teacher / "distilled.jsonl").stat().st_mtime_ns) == stamp

    out = tmp_path / "soft"
    assert main(["train", "--method", "soft-sd-only", "--distilled", str(teacher), "--data", str(dataset.path),
                 "--model", "tiny", "--out", str(out), "--epochs", "1", "--micro-batch", "8", "--effective-batch", "8",
                 "--set", "train.validate_every_epoch=false", "--set", "train.bf16=off", "--no-preflight"]) == 0
    assert json.loads((out / "run.json").read_text())["distilled_from"] == str(teacher.resolve())


def test_adapter_teacher_copies_only_the_adapter_files(trained, tmp_path):
    from softrec.runs import teacher_run

    sft, _ = trained
    checkpoint = tmp_path / "checkpoint-3"  # what a trainer checkpoint holds beside the adapter
    shutil.copytree(sft / "epochs" / "epoch-2", checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    teacher = teacher_run(sft, tmp_path / "t", adapter=checkpoint)
    assert sorted(p.name for p in (teacher / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((teacher / "run.json").read_text())["teacher_adapter"] == str(checkpoint.resolve())
    best = teacher_run(sft, tmp_path / "best")  # --out alone: the run's best weights, e.g. for another --mode
    assert (best / "adapter" / "adapter_model.safetensors").read_bytes() == (
        sft / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--epoch", "1"], "--epoch needs --out TEACHER_DIR"),
    (["--adapter", "x"], "--adapter needs --out TEACHER_DIR"),
    (["--epoch", "5", "--out", "{tmp}/t"], "epochs kept: 1, 2"),
    (["--adapter", "{tmp}", "--out", "{tmp}/t"], "no adapter_config.json"),
    (["--epoch", "1", "--out", "{sft}"], "is the SFT run itself"),
])
def test_teacher_mistakes_exit_2_with_one_line(trained, tmp_path, capsys, args, message):
    sft, dataset = trained
    args = [a.format(tmp=tmp_path, sft=sft) for a in args]
    assert distill(sft, dataset, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "t").exists()


def test_out_holding_another_teacher_or_a_training_is_refused(trained, tmp_path):
    from softrec.errors import UserError
    from softrec.runs import RunDir, teacher_run

    sft, _ = trained
    teacher_run(sft, tmp_path / "t", epoch=1)
    with pytest.raises(UserError, match="already the teacher epoch 1 of .*, not epoch 2"):
        teacher_run(sft, tmp_path / "t", epoch=2)
    RunDir(tmp_path / "other").update_info(base_model="tiny", method="sft")
    with pytest.raises(UserError, match="a training run, not a teacher"):
        teacher_run(sft, tmp_path / "other", epoch=1)
    assert json.loads((tmp_path / "t" / "run.json").read_text())["teacher_epoch"] == 1


def test_full_fine_tuning_keeps_epoch_models_only_when_asked(tmp_path):
    from conftest import make_tiny_dataset

    from softrec.config import load_config
    from softrec.models.registry import load_run_model
    from softrec.runs import teacher_run
    from softrec.training.trainer import train_llm

    dataset = make_tiny_dataset(tmp_path / "prepared", n_train=8)
    config = load_config(values={
        "model.name": "tiny", "train.micro_batch": 8, "train.effective_batch": 8, "train.epochs": 1,
        "train.warmup_steps": 0, "train.checkpoint_every": 0, "train.bf16": "off", "train.validate_every_epoch": False,
        "train.lora.enabled": False, "train.keep_epoch_models": True,
    })
    train_llm(config, dataset, tmp_path / "sft", progress=False)
    teacher = teacher_run(tmp_path / "sft", tmp_path / "t", epoch=1)
    assert (teacher / "model" / "model.safetensors").is_file() and not (teacher / "adapter").exists()
    model, _ = load_run_model(teacher)  # whole model and tokenizer, checked against run.json's key
    assert model is not None


def test_evaluate_epoch_ranks_that_epochs_weights_beside_the_kept_result(trained, tmp_path, capsys):
    """`softrec evaluate --epoch N` is the epoch-N teacher's evaluation, to the byte, in its own folder;
    the run's latest metrics stay those of its kept weights."""
    from softrec.runs import teacher_run

    sft, dataset = trained
    run = shutil.copytree(sft, tmp_path / "sft")
    evaluate = ["evaluate", "--data", str(dataset.path), "--grounding", "l2", *SMALL]
    assert main([*evaluate, "--run-dir", str(run)]) == 0
    kept = (run / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main([*evaluate, "--run-dir", str(run), "--epoch", "1"]) == 0
    assert "latest copied" not in capsys.readouterr().out
    assert (run / "metrics.json").read_bytes() == kept  # not published as the run's latest
    teacher = teacher_run(run, tmp_path / "teacher-1", epoch=1)
    assert main([*evaluate, "--run-dir", str(teacher)]) == 0
    name = "test-l2-beams2-maxtok6"  # SMALL's decoding differs from the run's own
    ours, theirs = run / "eval" / f"{name}-epoch1", teacher / "eval" / name
    assert (ours / "predictions.jsonl").read_bytes() == (theirs / "predictions.jsonl").read_bytes()
    assert json.loads((ours / "metrics.json").read_text()) == json.loads((theirs / "metrics.json").read_text())

    assert main([*evaluate, "--run-dir", str(run), "--epoch", "1"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (run / "metrics.json").read_bytes() == kept
    assert main([*evaluate, "--run-dir", str(run), "--epoch", "5"]) == 2
    error = capsys.readouterr().err
    assert "--epoch 5:" in error and "epochs kept: 1, 2" in error
