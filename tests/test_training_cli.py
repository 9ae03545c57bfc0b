"""`softrec train`: user errors exit 2 with one line; a tiny SFT run writes a complete run dir."""

from __future__ import annotations

import json

from softrec.cli import main

FAST = ["--micro-batch", "8", "--effective-batch", "8", "--set", "train.validate_every_epoch=false",
        "--set", "train.bf16=off"]


def test_missing_data_dir_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--method", "sft", "--data", str(tmp_path / "nope"), "--model", "tiny",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--data" in err and "nope" in err


def test_soft_without_distilled_exits_2(tiny_dataset, tmp_path, capsys):
    code = main(["train", "--method", "soft", "--data", str(tiny_dataset.path), "--model", "tiny",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "--distilled" in capsys.readouterr().err


def test_bad_setting_exits_2(tiny_dataset, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "run"),
                 "--set", "train.micro_batch=0"])
    assert code == 2 and "train.micro_batch" in capsys.readouterr().err


def test_sft_run_then_rerun_reuses_it(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "sft", "--data", str(tiny_dataset.path), "--model", "tiny",
            "--out", str(out), "--epochs", "1", "--seed", "3", *FAST]
    assert main(args) == 0
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["base_model"] == "tiny" and info["method"] == "sft" and info["dataset_key"] == tiny_dataset.checksum
    assert info["inputs"]["dataset"] == tiny_dataset.checksum
    assert "seed: 3" in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "reused" in capsys.readouterr().out
