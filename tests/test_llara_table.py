"""benchmarks/table_issue6.py: every row on the same samples and settings; LLaRA reads the SASRec row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "table_issue6.py"


def _script():
    spec = importlib.util.spec_from_file_location("table_issue6", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["table_issue6"] = module
    spec.loader.exec_module(module)
    return module


def _plan(tmp_path, *extra):
    script = _script()
    parser_args = ["--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "out"), "--model", "tiny",
                   "--limit", "8", "--shots", "2", *extra]
    captured = {}
    original = script.plan

    def spy(args):
        captured["rows"] = original(args)
        return captured["rows"]

    script.plan = spy
    assert script.main([*parser_args, "--dry-run"]) == 0
    return captured["rows"]


def test_rows_share_the_evaluation_and_llara_uses_the_sasrec_row(tmp_path):
    rows = _plan(tmp_path)
    assert [r.system for r in rows] == ["icl-0", "icl-k", "sasrec", "gru4rec", "bigrec-sft", "llara-sft"]
    evaluations = [c for r in rows for c in r.commands if c[0] == "evaluate"]
    assert len(evaluations) == 6
    for command in evaluations:
        tail = command[command.index("--split"):]
        assert tail[:6] == ["--split", "test", "--grounding", "l2", "--quiet", "--limit"] and tail[6] == "8"
    llara_train = rows[-1].commands[0]
    assert llara_train[llara_train.index("--backbone") + 1] == "llara"
    assert llara_train[llara_train.index("--sasrec-run") + 1] == str(tmp_path / "out" / "sasrec")


def test_llara_alone_first_trains_its_sasrec(tmp_path):
    rows = _plan(tmp_path, "--systems", "llara-sft")
    assert [c[:3] for c in rows[0].commands] == [
        ["train", "--method", "sasrec"], ["train", "--method", "sft"], ["evaluate", "--run", str(tmp_path / "out" / "llara-sft")]]


@pytest.mark.slow
def test_smoke_table_on_the_tiny_model(tmp_path):
    """About a minute on 2 shared cores: six rows end to end, one table."""
    from conftest import make_tiny_dataset

    make_tiny_dataset(tmp_path / "prepared", n_train=32, n_valid=8, n_test=12)
    script = _script()
    assert script.main([
        "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "out"), "--model", "tiny", "--limit", "8",
        "--epochs", "1", "--train-size", "16", "--valid-size", "4", "--shots", "2", "--threads", "1",
        "--classic-set", "classic.epochs=2", "--llm-set", "eval.max_new_tokens=8", "--llm-set", "train.bf16=off",
    ]) == 0
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["system"] for r in table["rows"]] == ["icl-0", "icl-k", "sasrec", "gru4rec", "bigrec-sft", "llara-sft"]
    assert table["n"] == 8 and all("HR@10" in r["metrics"] for r in table["rows"])
    assert "softrec train --method sft --backbone llara" in (tmp_path / "out" / "table.md").read_text()
