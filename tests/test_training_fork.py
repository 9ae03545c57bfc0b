"""`softrec train --fork-from`: a SOFT run that takes its sibling's epoch 1 ends where the same run
trained from the start ends (golden: weights within 1e-6, the same history), and is refused a sibling
that trained otherwise."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from softrec.cli import main

TRAIN = ["--model", "tiny", "--epochs", "3", "--micro-batch", "4", "--effective-batch", "4", "--valid-samples", "4",
         "--no-preflight", "--set", "train.bf16=off", "--set", "train.warmup_steps=0", "--set", "train.learning_rate=5e-3",
         "--set", "eval.num_beams=2", "--set", "eval.max_new_tokens=6", "--set", "soft.probe_size=4",
         "--set", "train.patience=5"]


@pytest.fixture()
def teacher_and_sibling(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    data = str(tiny_dataset.path)
    sft = tmp_path / "sft"
    assert main(["train", "--method", "sft", "--data", data, "--out", str(sft), *TRAIN[:-2], "--epochs", "1"]) == 0
    assert main(["distill", "--run-dir", str(sft), "--data", data, "--set", "soft.distill_max_new_tokens=6",
                 "--set", "soft.distill_beams=2"]) == 0
    sibling = tmp_path / "soft-a1"
    assert main(["train", "--method", "soft", "--alpha", "1", "--distilled", str(sft), "--data", data,
                 "--out", str(sibling), *TRAIN]) == 0
    return data, sft, sibling


def _train(data, sft, out, method, alpha, *extra):
    alpha_args = ["--alpha", alpha] if alpha else []
    return main(["train", "--method", method, *alpha_args, "--distilled", str(sft), "--data", data, "--out", str(out),
                 *TRAIN, *extra])


# the linear scheduler (lambda 1, 0.5, 0) makes epochs 2-3 differ from the sibling's (the tiny model's probe
# distance does not fall, so its adaptive lambda stays 1): a fork that kept the sibling's state would show
@pytest.mark.parametrize(("method", "extra"), [("soft-linear", ()),
                                               ("soft", ("--alpha", "10")), ("soft-sd-only", ())])
def test_a_forked_run_ends_where_the_run_from_the_start_ends(teacher_and_sibling, tmp_path, method, extra):
    data, sft, sibling = teacher_and_sibling
    point = json.loads((sibling / "fork-point" / "fork.json").read_text())
    assert point["epoch"] == 1 and point["lambda"] == 1.0
    fresh, forked = tmp_path / f"{method}-fresh", tmp_path / f"{method}-forked"
    assert _train(data, sft, fresh, method, None, *extra) == 0
    assert _train(data, sft, forked, method, None, *extra, "--fork-from", str(sibling)) == 0

    a = load_file(fresh / "adapter" / "adapter_model.safetensors")
    b = load_file(forked / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)
    history = [json.loads((run / "history.json").read_text()) for run in (fresh, forked)]
    assert len(history[0]) == len(history[1]) == 3
    for one, other in zip(*history, strict=True):
        assert one["train_loss"] == pytest.approx(other["train_loss"], abs=1e-6)
        assert one["lambda"] == pytest.approx(other["lambda"], abs=1e-9) and one["valid"] == other["valid"]
    assert history[1][0]["train_seconds"] == json.loads((sibling / "history.json").read_text())[0]["train_seconds"]
    if method == "soft-linear":
        assert [e["lambda"] for e in history[1]] == [1.0, 0.5, 0.0]
    info = json.loads((forked / "run.json").read_text())
    assert info["forked_from"] == str(sibling.resolve()) and info["forked_at_epoch"] == 1
    assert json.loads((fresh / "run.json").read_text()).get("forked_from") is None


def test_a_sibling_that_trained_otherwise_is_refused_and_one_without_a_fork_point_is_not_used(
        teacher_and_sibling, tmp_path, capsys, caplog):
    data, sft, sibling = teacher_and_sibling
    out = tmp_path / "other-lr"
    assert _train(data, sft, out, "soft", "10", "--set", "train.learning_rate=1e-3", "--fork-from", str(sibling)) == 2
    err = capsys.readouterr().err.strip()
    assert "its epoch 1 is not this run's: other settings" in err and "\n" not in err
    assert not (out / "checkpoints").exists()

    out = tmp_path / "from-sft"  # an SFT run keeps no fork point: the run trains from the start
    assert _train(data, sft, out, "soft", "10", "--fork-from", str(sft)) == 0
    assert "no fork-point/ there" in caplog.text and "forked_from" not in json.loads((out / "run.json").read_text())
    assert main(["train", "--method", "sft", "--data", data, "--out", str(tmp_path / "sft2"), *TRAIN,
                 "--fork-from", str(sibling)]) == 2
    assert "only for the SOFT methods" in capsys.readouterr().err
