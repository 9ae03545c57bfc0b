"""Corrupted artefacts are detected and rebuilt (never used), one writer per run directory, and the
same seed and settings give identical prepared data, distilled targets and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_tiny_dataset

from softrec.cli import main
from softrec.config import load_config
from softrec.data.dataset import PreparedDataset
from softrec.errors import UserError
from softrec.runs import RunDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SOFTREC_NO_PREFLIGHT": "1"}
EVAL = ["--split", "test", "--grounding", "l2", "--num-beams", "2", "--max-new-tokens", "6", "--quiet"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte(path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- corruption
def test_corrupted_dataset_split_is_refused_then_rebuilt_by_prepare(tmp_path):
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    config = DataConfig(dataset="demo", train_size=32, valid_size=8, test_size=8)
    first = prepare_dataset(config, tmp_path / "data")
    original = (first.path / "train.jsonl").read_bytes()
    _flip_byte(first.path / "train.jsonl", at=40)  # a changed item id: still valid JSON lines
    with pytest.raises(UserError, match="train.jsonl: corrupted"):
        PreparedDataset(first.path).split("train")
    rebuilt = prepare_dataset(config, tmp_path / "data")  # sees the damage and writes it again
    assert (rebuilt.path / "train.jsonl").read_bytes() == original
    assert len(rebuilt.split("train")) == 32


def test_truncated_catalogue_is_refused(tiny_dataset):
    _truncate(tiny_dataset.path / "catalogue.jsonl")
    with pytest.raises(UserError, match="catalogue.jsonl: corrupted"):
        _ = PreparedDataset(tiny_dataset.path).titles


def test_training_cli_refuses_corrupted_data(tiny_dataset, tmp_path, capsys):
    _truncate(tiny_dataset.path / "train.jsonl", keep=0.9)
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "run"), "--model", "tiny"]) == 2
    assert "corrupted" in capsys.readouterr().err


@pytest.fixture()
def trained(tiny_dataset, tmp_path):
    """A finished one-epoch SFT run of the tiny model (validation off: fast)."""
    from softrec.training.trainer import train_llm

    config = load_config(values={"model.name": "tiny", "train.epochs": 1, "train.micro_batch": 8,
                                 "train.effective_batch": 8, "train.bf16": "off",
                                 "train.validate_every_epoch": False})
    out = tmp_path / "run"
    train_llm(config, tiny_dataset, out, progress=False)
    return config, out


def test_corrupted_adapter_is_never_loaded_and_training_rebuilds_it(trained, tiny_dataset):
    from safetensors.torch import load_file

    from softrec.models.registry import load_run_model
    from softrec.training.trainer import train_llm

    config, out = trained
    weights = out / "adapter" / "adapter_model.safetensors"
    good = load_file(str(weights))
    _flip_byte(weights)
    with pytest.raises(UserError, match="adapter: corrupted"):
        load_run_model(out)
    again = train_llm(config, tiny_dataset, out, progress=False, resume=True)  # as `softrec run` reruns it
    assert not again.reused
    for key, value in load_file(str(weights)).items():  # retrained with the same seed
        torch.testing.assert_close(value, good[key], rtol=0, atol=1e-6)
    assert RunDir(out).valid("adapter")
    load_run_model(out)


def test_corrupted_distilled_targets_are_refused_and_rebuilt(trained, tiny_dataset):
    from softrec.inference import distill as stage

    config, out = trained
    config = load_config(None, ["soft.distill_max_new_tokens=4", "soft.distill_beams=2", "eval.batch_size=8"])
    path = stage.distill(out, tiny_dataset, config, progress=False)
    original = path.read_bytes()
    _truncate(path, keep=0.6)
    with pytest.raises(UserError, match="distilled.jsonl: corrupted"):
        stage.load_distilled(out)
    assert stage.distill(out, tiny_dataset, config, progress=False).read_bytes() == original
    assert len(stage.load_distilled(out)) == 24


def test_corrupted_metrics_and_predictions_are_recomputed(trained, capsys):
    _, out = trained
    assert main(["evaluate", "--run", str(out), *EVAL]) == 0
    folder = out / "eval" / "test-l2-beams2-maxtok6"  # quick decoding settings: beside the full evaluation
    metrics, predictions = (folder / "metrics.json").read_bytes(), (folder / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    (folder / "metrics.json").write_text(json.dumps({"HR@10": 1.0}))  # a tampered result
    _truncate(folder / "predictions.jsonl")
    assert main(["evaluate", "--run", str(out), *EVAL]) == 0
    assert "up to date" not in capsys.readouterr().out  # recomputed, not reused
    assert (folder / "metrics.json").read_bytes() == metrics
    assert (folder / "predictions.jsonl").read_bytes() == predictions
    assert (out / "metrics.json").read_bytes() == metrics


# ---------------------------------------------------------------- lock
def test_second_process_on_the_same_run_directory_refuses(tiny_dataset, tmp_path):
    """A real second `softrec train` process while the first holds the run directory."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom softrec.runs import RunDir\n"
         "with RunDir(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "softrec", "train", "--data", str(tiny_dataset.path), "--out", str(out),
             "--model", "tiny", "--epochs", "1"],
            env=ENV, capture_output=True, text=True, timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"softrec: error: {out}: another softrec process is using this run directory; "
        "wait for it to finish or choose another --out"
    )
    assert not (out / "run.json").exists()  # the refused process wrote nothing


@pytest.mark.slow
def test_two_real_training_processes_on_one_run_directory(tiny_dataset, tmp_path):
    """Two `softrec train` processes started together: one trains, the other refuses."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "softrec", "train", "--data", str(tiny_dataset.path), "--out", str(out),
               "--model", "tiny", "--epochs", "3", "--micro-batch", "4", "--effective-batch", "4",
               "--set", "train.validate_every_epoch=false"]
    # the first one's steps are slowed (0.5 s each) so it is still training when the second starts
    slowed = ("import sys, time\nfrom transformers import Trainer\nstep = Trainer.training_step\n"
              "Trainer.training_step = lambda self, *a, **k: (step(self, *a, **k), time.sleep(0.5))[0]\n"
              "from softrec.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    first = subprocess.Popen([sys.executable, "-c", slowed, *command[3:]], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "run.json").exists():  # the first process holds the lock once it writes run.json
        assert first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert second.returncode == 2 and "another softrec process is using this run directory" in second.stderr


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_prepared_data(tmp_path):
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    config = DataConfig(dataset="demo", train_size=64, valid_size=16, test_size=16, seed=7)
    a = prepare_dataset(config, tmp_path / "a").path
    b = prepare_dataset(config, tmp_path / "b").path
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "train.jsonl" in names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = prepare_dataset(config.model_copy(update={"seed": 8}), tmp_path / "c").path
    assert (other / "train.jsonl").read_bytes() != (a / "train.jsonl").read_bytes()


def test_same_seed_gives_identical_distilled_targets_and_metrics(tmp_path):
    """Two independent runs (fresh dataset, training, distillation, evaluation): identical bytes."""
    from softrec.inference import distill as stage
    from softrec.training.trainer import train_llm

    outputs = []
    for name in ("a", "b"):
        root = tmp_path / name
        dataset = make_tiny_dataset(root / "prepared")
        config = load_config(values={"model.name": "tiny", "train.epochs": 1, "train.micro_batch": 8,
                                     "train.effective_batch": 8, "train.bf16": "off", "train.learning_rate": 1e-2,
                                     "train.validate_every_epoch": False, "soft.distill_beams": 2,
                                     "soft.distill_max_new_tokens": 4})
        train_llm(config, dataset, root / "run", progress=False)
        distilled = stage.distill(root / "run", dataset, config, progress=False)
        assert main(["evaluate", "--run", str(root / "run"), *EVAL]) == 0
        outputs.append({
            "adapter": (root / "run" / "adapter" / "adapter_model.safetensors").read_bytes(),
            "distilled": distilled.read_bytes(),
            "predictions": (root / "run" / "predictions.jsonl").read_bytes(),
            "metrics": json.loads((root / "run" / "metrics.json").read_text()),
        })
    a, b = outputs
    for key in ("adapter", "distilled", "predictions"):
        assert a[key] == b[key], key
    drop = {"eval"}  # settings block names the (different) dataset directory
    assert {k: v for k, v in a["metrics"].items() if k not in drop} == {k: v for k, v in b["metrics"].items() if k not in drop}


def test_manifest_records_what_a_rerun_needs(trained):
    _, out = trained
    info = json.loads((out / "run.json").read_text())
    assert {"base_model", "method", "dataset", "dataset_key", "template", "train_key"} <= set(info)
    assert info["environment"]["packages"]["torch"] and "git_commit" in info["environment"]
    assert info["inputs"]["dataset"] == info["dataset_key"]
    saved = load_config(out / "config.yaml")
    assert saved.model.name == "tiny" and saved.train.seed == 42
    manifest = RunDir(out).manifest()["artefacts"]
    assert manifest["adapter"]["key"] == info["train_key"] and len(manifest["adapter"]["sha256"]) == 64


def test_a_built_install_names_the_commit_it_was_built_from(tmp_path):
    """Long experiments run from a non-editable install (no checkout beside it): the wheel carries its
    commit in softrec/_build.json, and provenance reads it there."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(root), str(src)], check=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):  # this working tree's code at its HEAD (a clean clone in CI)
        if (root / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((root / name).read_bytes())
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True,
                           text=True, check=True).stdout.strip()
    expected = head.stdout.strip() + ("-dirty" if dirty else "")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheels"), str(tmp_path / "src")], check=True, capture_output=True)
    wheel, = (tmp_path / "wheels").glob("softrec-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    assert json.loads((tmp_path / "site" / "softrec" / "_build.json").read_text()) == {"git_commit": expected}
    probe = "from softrec.runs import git_commit; print(git_commit())"
    shown = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}).stdout.strip()
    assert shown == expected
