"""Config mistakes are caught before any work starts: exit 2, one line, a suggestion (issue 18)."""

from __future__ import annotations

import json

import pytest
import yaml

from softrec.cli import main
from softrec.config import load_config, setting_keys
from softrec.errors import UserError


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    return err


@pytest.mark.parametrize(("setting", "expected", "hint"), [
    ("train.selection_metric=hr@10", "train.selection_metric", "did you mean 'HR@10'"),
    ("train.lr_scheduler=cosin", "train.lr_scheduler", "did you mean 'cosine'"),
    ("train.selection_metric=HR@7", "eval.ks", ""),
    ("trian.epochs=2", "trian.epochs", "did you mean 'train.epochs'"),
    ("train.lora.rr=4", "train.lora.rr", "did you mean 'train.lora.r'"),
    ("classic.valid_metric=ndcg@10", "classic.valid_metric", "did you mean 'NDCG@10'"),
    ("eval.ks=[0, 10]", "eval.ks", ""),
    ("data.format=recbol", "data.format", "did you mean 'recbole'"),
])
def test_bad_setting_exits_2_before_training(setting, expected, hint, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", "sft", "--data", str(tiny_dataset.path), "--model", "tiny",
                 "--out", str(out), "--set", setting])
    err = _one_line_error(capsys)
    assert code == 2 and expected in err and hint in err
    assert not out.exists()  # nothing started


def test_every_scheduler_choice_is_one_transformers_builds():
    import torch
    from transformers import get_scheduler

    from softrec.config import LR_SCHEDULERS

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in LR_SCHEDULERS:
        load_config(None, [f"train.lr_scheduler={name}"])
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)


def test_set_keys_cover_the_schema():
    keys = setting_keys()
    assert "train.lora.r" in keys and "data.train_size" in keys and "classic.epochs" in keys
    with pytest.raises(UserError, match="did you mean 'eval.num_beams'"):
        load_config(None, ["eval.num_beam=2"])


def test_config_show_prints_the_resolved_settings(tmp_path, capsys):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  epochs: 3\n")
    assert main(["config", "show", "--config", str(file), "--set", "eval.num_beams=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 3 and shown["eval"]["num_beams"] == 2 and shown["data"]["train_size"] == 4096
    assert main(["config", "show", "--keys"]) == 0
    assert "train.selection_metric" in capsys.readouterr().out.split()
    assert main(["config", "show", "--set", "train.selection_metric=hr@10"]) == 2
    assert "HR@10" in _one_line_error(capsys)


def test_unknown_yaml_key_gets_a_suggestion(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  epoch: 3\n")
    with pytest.raises(UserError, match=r"c.yaml: unknown setting 'train.epoch'.*did you mean 'epochs'"):
        load_config(file)


@pytest.mark.parametrize(("name", "suggestion"), [("movielens", "ml-100k"), ("ml100k", "ml-100k"), ("dmeo", "demo")])
def test_unknown_dataset_name_gets_a_suggestion(name, suggestion, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOFTREC_DATA_DIR", str(tmp_path / "none"))
    assert main(["data", "prepare", "--dataset", name, "--out", str(tmp_path / "d")]) == 2
    assert f"did you mean '{suggestion}'" in _one_line_error(capsys)


@pytest.mark.parametrize(("name", "suggestion"), [("gemma", "gemma-3-270m"), ("smollm2-135", "smollm2-135m"), ("tinyy", "tiny")])
def test_unknown_model_name_gets_a_suggestion(name, suggestion, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset.path), "--model", name, "--out", str(out)]) == 2
    assert f"did you mean '{suggestion}'" in _one_line_error(capsys)
    assert not out.exists()


def test_epochs_and_seed_mean_the_same_for_classic_methods(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sasrec"
    assert main(["train", "--method", "sasrec", "--data", str(tiny_dataset.path), "--out", str(out),
                 "--epochs", "2", "--seed", "5", "--set", "classic.patience=50"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["classic"]["epochs"] == 2 and saved["classic"]["seed"] == 5
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2


@pytest.mark.parametrize("flag", [["--micro-batch", "4"], ["--train-samples", "8"], ["--full"], ["--model", "tiny"]])
def test_llm_only_flags_are_refused_for_classic_methods(flag, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "gru"
    assert main(["train", "--method", "gru4rec", "--data", str(tiny_dataset.path), "--out", str(out), *flag]) == 2
    assert flag[0] in _one_line_error(capsys) and not out.exists()


def test_run_config_records_the_prepared_data(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--method", "sft", "--data", str(tiny_dataset.path), "--model", "tiny", "--out", str(out),
                 "--epochs", "1", "--micro-batch", "8", "--effective-batch", "8",
                 "--set", "train.validate_every_epoch=false", "--set", "train.bf16=off"]) == 0
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (data["train_size"], data["valid_size"], data["test_size"]) == (24, 8, 8)
    assert data["dataset"] == "tiny-books"  # the source's name; run.json holds the prepared directory


def test_help_is_fast_and_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from softrec.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_flag_has_help():
    import argparse

    from softrec.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if hasattr(sub, "_ensure"):
                        continue  # lazily built (bench suites): their modules own their help
                    yield from walk(sub, f"{path} {name}")
            elif action.option_strings and action.help is None:
                yield f"{path} {action.option_strings[0]}"

    missing = list(walk(build_parser(), "softrec"))
    assert not missing, missing


def test_quick_limited_evaluation_keeps_the_full_one(tmp_path, tiny_dataset, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "tiny", "method": "sft", "dataset": str(tiny_dataset.path),
                                              "template": "alpaca"}))
    (run / "config.yaml").write_text(load_config(None, ["eval.num_beams=2", "eval.max_new_tokens=6"]).to_yaml())
    fast = ["--quiet"]
    assert main(["evaluate", "--run-dir", str(run), *fast]) == 0
    assert main(["evaluate", "--run", str(run), "--limit", "3", *fast]) == 0
    assert main(["-q", "evaluate", "--run-dir", str(run), "--limit", "3", "--num-beams", "1", *fast]) == 0
    full = json.loads((run / "eval" / "test-l2" / "metrics.json").read_text())
    assert full["n"] == 8  # what `softrec report` reads, untouched by the quick reruns
    assert json.loads((run / "eval" / "test-l2-limit3" / "metrics.json").read_text())["n"] == 3
    assert json.loads((run / "eval" / "test-l2-limit3-beams1" / "metrics.json").read_text())["eval"]["num_beams"] == 1
    # another decoding dtype than the run's (auto: bf16 on AMX CPUs) is named, and each file says which it used
    assert main(["evaluate", "--run", str(run), "--limit", "3", "--set", "eval.dtype=bfloat16", *fast]) == 0
    assert json.loads((run / "eval" / "test-l2-limit3-bfloat16" / "metrics.json").read_text())["decoded_in"] == "bfloat16"
    assert full["decoded_in"] == "float32"  # the suite's SOFTREC_CPU_BF16=0: auto decodes in fp32


def test_an_evaluation_decoded_in_another_dtype_is_not_reused(tmp_path, tiny_dataset, capsys, monkeypatch):
    """eval.dtype=auto is fp32 on AVX2 CPUs and bf16 on AMX ones: a suite resumed on the other kind
    must decode again rather than report (or finish) the first machine's numbers as its own."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "tiny", "method": "sft", "dataset": str(tiny_dataset.path),
                                              "template": "alpaca"}))
    (run / "config.yaml").write_text(load_config(None, ["eval.num_beams=2", "eval.max_new_tokens=6"]).to_yaml())
    args = ["evaluate", "--run-dir", str(run), "--limit", "3", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    from softrec.hardware import cpu_has_bf16

    monkeypatch.setenv("SOFTREC_CPU_BF16", "1")  # the same command on an AMX CPU
    cpu_has_bf16.cache_clear()
    try:
        assert main(args) == 0
    finally:
        monkeypatch.setenv("SOFTREC_CPU_BF16", "0")
        cpu_has_bf16.cache_clear()
    assert "up to date" not in capsys.readouterr().out
    metrics = json.loads((run / "eval" / "test-l2-limit3" / "metrics.json").read_text())
    assert metrics["decoded_in"] == metrics["eval"]["decoded_in"] == "bfloat16"


def test_report_to_defaults_to_tensorboard_and_refuses_a_missing_tracker(tiny_dataset, tmp_path, capsys, monkeypatch):
    import importlib.util

    assert load_config().train.report_to == ["tensorboard"]
    assert load_config(None, ["train.report_to=none"]).train.report_to == []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset.path), "--model", "tiny", "--out", str(out),
                 "--set", "train.report_to=[tensorboard, wandb]"]) == 2
    assert "pip install wandb" in _one_line_error(capsys) and not out.exists()


def test_train_size_means_prepare_time_sampling_only(tiny_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_dataset.path), "--model", "tiny", "--out", str(tmp_path / "r"),
                 "--train-size", "8"]) == 2
    assert "--train-samples" in _one_line_error(capsys)


def test_config_records_the_settings_a_dataset_was_prepared_with(tmp_path, capsys):
    from softrec.config import as_prepared
    from softrec.data.dataset import PreparedDataset

    out = tmp_path / "demo"
    assert main(["data", "prepare", "--dataset", "demo", "--out", str(out), "--train-size", "16",
                 "--valid-size", "8", "--test-size", "8", "--history-len", "5"]) == 0
    data = as_prepared(load_config(), PreparedDataset.load(out)).data
    assert (data.dataset, data.train_size, data.valid_size, data.test_size, data.history_len) == ("demo", 16, 8, 8, 5)
