"""Paired bootstrap comparison of two predictions files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from softrec.cli import main
from softrec.errors import UserError
from softrec.evaluation.compare import compare_predictions, load_predictions, paired_bootstrap
from softrec.runs import write_jsonl


def _write(path, ranks, prefix="s"):
    write_jsonl(path, [{"sample_id": f"{prefix}{i}", "target_rank": r} for i, r in enumerate(ranks)])
    return path


def test_identical_runs_differ_by_zero_with_p_one(tmp_path):
    ranks = [0, 3, None, 12, 1] * 20
    a, b = _write(tmp_path / "a.jsonl", ranks), _write(tmp_path / "b.jsonl", ranks)
    for d in compare_predictions(a, b, resamples=500):
        assert d.diff == 0 and d.low == 0 and d.high == 0 and d.p_value == 1.0


def test_clear_improvement_is_significant(tmp_path):
    a = _write(tmp_path / "a.jsonl", [None] * 80 + [0] * 20)
    b = _write(tmp_path / "b.jsonl", [0] * 80 + [None] * 20)
    by_name = {d.metric: d for d in compare_predictions(a, b, resamples=2000, seed=1)}
    hr = by_name["HR@10"]
    assert hr.a == pytest.approx(0.2) and hr.b == pytest.approx(0.8) and hr.diff == pytest.approx(0.6)
    assert 0 < hr.low < hr.diff < hr.high and hr.p_value < 0.01


def test_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(0)
    a = rng.random((200, 2))
    b = a + np.array([0.0, 0.1])
    first = paired_bootstrap(a, b, resamples=1000, seed=3)
    again = paired_bootstrap(a, b, resamples=1000, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    diff, low, high, p = first
    assert diff[1] == pytest.approx(0.1) and low[1] == pytest.approx(0.1) and high[1] == pytest.approx(0.1)
    assert p[0] == 1.0 and p[1] < 0.01


def test_different_samples_are_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [0, 1, 2])
    b = _write(tmp_path / "b.jsonl", [0, 1, 2], prefix="t")
    with pytest.raises(UserError, match="different samples"):
        compare_predictions(a, b)


def test_cli_accepts_run_dirs_and_prints_each_metric(tmp_path, capsys):
    for name, ranks in (("runA", [5, None, 0, 2]), ("runB", [0, 1, 0, None])):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "predictions.jsonl", ranks)
    assert main(["compare", str(tmp_path / "runA"), str(tmp_path / "runB"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "HR@10" in out and "NDCG@50" in out and "95% CI" in out
    assert main(["compare", str(tmp_path / "runA"), str(tmp_path / "runB"), "--json", "--resamples", "200"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in rows} >= {"HR@1", "NDCG@50"}
    assert main(["compare", str(tmp_path / "runA"), str(tmp_path / "nowhere")]) == 2


def test_a_predictions_file_edited_after_its_evaluation_is_refused(tmp_path):
    from softrec.runs import RunDir

    run = tmp_path / "run"
    path = _write(run / "predictions.jsonl", [1, 2, None])
    RunDir(run).record("predictions.jsonl", "key")
    assert load_predictions(run) == {"s0": 1, "s1": 2, "s2": None}  # intact: accepted
    path.write_text(path.read_text().replace('"target_rank": 1', '"target_rank": 0'))
    with pytest.raises(UserError, match="corrupted"):
        load_predictions(run)
