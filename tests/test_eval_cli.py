"""`softrec evaluate` / `recommend` on the tiny model, including a 2-process torchrun evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from softrec.cli import main
from softrec.runs import read_jsonl

FAST = ["--num-beams", "2", "--max-new-tokens", "6", "--quiet"]


@pytest.fixture()
def run_dir(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    info = {"base_model": "tiny", "method": "sft", "dataset": str(tiny_dataset.path), "template": "alpaca"}
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_evaluate_writes_results_and_reuses_them(run_dir, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--split", "test", "--grounding", "l2", *FAST]) == 0
    out = capsys.readouterr().out
    folder = run_dir / "eval" / "test-l2"
    assert str(folder / "metrics.json") in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["eval"]["exclude_history"] is False and metrics["eval"]["num_beams"] == 2
    assert {f"HR@{k}" for k in (1, 5, 10, 20, 50)} <= set(metrics) and "validity" in metrics
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert len(predictions) == 8
    # each prompt's decoding steps, and their mean: what generation cost, beside the time plan's guess
    max_new = metrics["eval"]["max_new_tokens"]
    assert all(1 <= p["decode_steps"] <= max_new for p in predictions)
    assert metrics["decode_steps"] == round(sum(p["decode_steps"] for p in predictions) / 8, 2)

    assert main(["evaluate", "--run", str(run_dir), "--grounding", "l2", *FAST]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run_dir), "--grounding", "l2", "--limit", "3", *FAST]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["n"] == 3


def test_torchrun_two_processes_match_one_process(run_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    args = ["evaluate", "--split", "test", "--grounding", "l2", *FAST]
    assert main([*args, "--run", str(run_dir)]) == 0
    two = tmp_path / "run2"
    shutil.copytree(run_dir, two, ignore=shutil.ignore_patterns("eval", "metrics.json", "predictions.jsonl", "manifest.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--run-dir`: torchrun's own parser would take `--run` for an abbreviation of its --run-path
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "softrec", *args, "--run-dir", str(two)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    one_rows, two_rows = read_jsonl(run_dir / "predictions.jsonl"), read_jsonl(two / "predictions.jsonl")
    ids = [row["sample_id"] for row in two_rows]
    assert sorted(ids) == sorted(f"test-{i}" for i in range(8)) and len(set(ids)) == 8
    assert two_rows == one_rows
    one_metrics = json.loads((run_dir / "metrics.json").read_text())
    two_metrics = json.loads((two / "metrics.json").read_text())
    assert {k: v for k, v in two_metrics.items() if k != "eval"} == {k: v for k, v in one_metrics.items() if k != "eval"}


def test_recommend_by_titles_and_ids(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--history", "Dune", "7", "hamlet", "-k", "5", "--json",
                 "--num-beams", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["history"] == [1, 7, 12]
    assert [row["rank"] for row in payload["items"]] == [1, 2, 3, 4, 5]
    assert len({row["item_id"] for row in payload["items"]}) == 5
    assert main(["recommend", "--run", str(run_dir), "--history", "Dune", "-k", "3", "--grounding", "trie"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and "title" in table and len(table.strip().splitlines()) >= 4


def test_recommend_unknown_title_suggests_close_matches(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--history", "Dune Mesiah"]) == 2
    err = capsys.readouterr().err
    assert "Dune Mesiah" in err and "'Dune Messiah'" in err


def test_icl_baseline_creates_and_evaluates_a_run(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "icl"
    assert main(["evaluate", "--method", "icl", "--shots", "2", "--model", "tiny", "--data", str(tiny_dataset.path),
                 "--out", str(out), *FAST]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "icl" and info["shots"] == 2 and info["base_model"] == "tiny"
    assert json.loads((out / "metrics.json").read_text())["n"] == 8


def test_classic_runs_dispatch_to_load_ranker(run_dir, monkeypatch, tiny_dataset):
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "method": "sasrec"}))
    n_items = len(tiny_dataset.titles)

    def load_ranker(path):
        assert Path(path) == run_dir
        return lambda samples: torch.stack([torch.arange(n_items, dtype=torch.float) for _ in samples])

    monkeypatch.setitem(sys.modules, "softrec.baselines", types.SimpleNamespace(load_ranker=load_ranker))
    assert main(["evaluate", "--run", str(run_dir), "--quiet"]) == 0
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert all(row["ranked"][:3] == [n_items - 1, n_items - 2, n_items - 3] for row in rows)


def test_reuse_from_copies_a_siblings_evaluation_only_when_its_tensors_are_this_runs(sft_run, tiny_dataset,
                                                                                   tmp_path, monkeypatch, capsys):
    """SOFT siblings that kept their shared epoch 1 hold the same tensors under different model cards:
    the second one's evaluation is the first one's, copied (no model loaded); other tensors, other
    decoding settings or --force evaluate."""
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    from softrec.evaluation import evaluate
    from softrec.evaluation.stage import tensors_fingerprint

    data = ["--data", str(tiny_dataset.path), "--grounding", "l2", *FAST]
    first, sibling = sft_run, tmp_path / "sibling"
    assert main(["evaluate", "--run", str(first), *data]) == 0
    shutil.copytree(first / "adapter", sibling / "adapter")
    (sibling / "adapter" / "README.md").write_text("another run's model card\n")
    (sibling / "run.json").write_text((first / "run.json").read_text())
    assert tensors_fingerprint(sibling) == tensors_fingerprint(first)
    real = evaluate.evaluate_model
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: pytest.fail("evaluated, not copied"))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(sibling), "--reuse-from", str(first), *data]) == 0
    assert "its result copied" in capsys.readouterr().out
    folder = Path("eval") / "test-l2"
    assert (sibling / folder / "predictions.jsonl").read_bytes() == (first / folder / "predictions.jsonl").read_bytes()
    copied = json.loads((sibling / "metrics.json").read_text())
    assert copied.pop("copied_from") == str(first.resolve())
    assert copied == json.loads((first / "metrics.json").read_text())
    assert main(["evaluate", "--run", str(sibling), *data]) == 0  # recorded as its own: a rerun reuses it
    assert "up to date" in capsys.readouterr().out

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    other_decoding = ["--data", str(tiny_dataset.path), "--grounding", "l2", "--num-beams", "3",
                      "--max-new-tokens", "6", "--quiet"]
    assert main(["evaluate", "--run", str(sibling), "--reuse-from", str(first), *other_decoding]) == 0
    assert calls, "the first run has no evaluation with 3 beams: nothing to copy"
    calls.clear()
    assert main(["evaluate", "--run", str(sibling), "--reuse-from", str(first), "--force", *data]) == 0
    assert calls and "copied_from" not in json.loads((sibling / "metrics.json").read_text())

    from safetensors.torch import load_file, save_file

    weights = sibling / "adapter" / "adapter_model.safetensors"
    save_file({k: v + 1e-3 for k, v in load_file(weights).items()}, weights)
    assert tensors_fingerprint(sibling) != tensors_fingerprint(first)
    calls.clear()
    third = tmp_path / "third"
    shutil.copytree(sibling, third, ignore=shutil.ignore_patterns("eval", "metrics.json", "predictions.jsonl", "manifest.json"))
    assert main(["evaluate", "--run", str(third), "--reuse-from", str(first), *data]) == 0
    assert calls and "copied_from" not in json.loads((third / "metrics.json").read_text())


def test_reuse_from_a_path_that_is_not_a_run_is_refused_before_any_work(sft_run, tiny_dataset, tmp_path, capsys):
    """A mistyped --reuse-from must not silently fall back to a full evaluation."""
    missing = tmp_path / "no-such-run"
    code = main(["evaluate", "--run", str(sft_run), "--reuse-from", str(missing), "--data", str(tiny_dataset.path),
                 *FAST])
    assert code == 2
    assert f"--reuse-from {missing}: not a softrec run directory" in capsys.readouterr().err
    assert not (sft_run / "eval").exists()
