"""The one-command recipe on the tiny model: every stage runs, the report has what users read."""

from __future__ import annotations

import json
import math

import pytest

from softrec.cli import main


def test_run_pipeline_end_to_end_then_rerun_reuses(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run", "--dataset", "demo", "--model", "tiny", "--out", str(out), "--epochs", "2",
        "--train-size", "16", "--valid-size", "4", "--test-size", "6",
        "--set", "train.effective_batch=8", "--set", "train.warmup_steps=0",
        "--set", "soft.probe_size=4", "--set", "eval.max_new_tokens=6",
        "--set", "soft.distill_max_new_tokens=6", "--set", "eval.num_beams=2", "--set", "soft.distill_beams=2",
    ]
    assert main(args) == 0
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert set(report["methods"]) == {"sft", "soft"}
    tested = {}
    for name, method in report["methods"].items():
        # the report's metrics are the ones its predictions give, recomputed here from the ranked ids
        [predictions] = (out / name / "eval").glob("test-*/predictions.jsonl")
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        tested[name] = [r["sample_id"] for r in rows]
        ranks = []
        for r in rows:
            shown = r["ranked"].index(r["target"]) if r["target"] in r["ranked"] else None
            assert shown == r["target_rank"] or (shown is None and (r["target_rank"] or 0) >= len(r["ranked"]))
            ranks.append(r["target_rank"])
        hits = [rank is not None and rank < 10 for rank in ranks]
        assert method["metrics"]["n"] == len(rows) == 6
        assert method["metrics"]["HR@10"] == pytest.approx(sum(hits) / 6)
        assert method["metrics"]["NDCG@10"] == pytest.approx(
            sum(1 / math.log2(rank + 2) for rank, hit in zip(ranks, hits, strict=True) if hit) / 6)
    assert tested["sft"] == tested["soft"], "both methods are evaluated on the same test samples"
    soft = report["methods"]["soft"]
    assert soft["alpha"] == 1.0
    assert set(soft["lambda"]) == {"1", "2"} and soft["lambda"]["1"] == 1.0
    assert set(soft["distance"]) == {"0", "1", "2"}
    assert "soft vs sft" in report["comparisons"]
    text = (out / "report" / "report.md").read_text()
    assert "| sft |" in text and "| soft |" in text and "lambda" in text
    import matplotlib.image
    import numpy as np

    for plot in ("curriculum.png", "training.png"):  # PNGs that decode, not just non-empty files
        image = matplotlib.image.imread(out / "report" / plot)
        assert image.shape[:2] == (480, 1200), plot  # the 10 x 4 in figures at 120 dpi
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20, plot  # lines and text: not blank
    assert len((out / "sft" / "distilled.jsonl").read_text().splitlines()) == 16

    # a rerun trains nothing: every artefact is still valid
    before = (out / "soft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "soft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_alpha_sweep_keeps_the_run_with_the_best_validation(tmp_path):
    from softrec.pipeline import _best_on_validation

    def run(name, epochs):
        path = tmp_path / name
        path.mkdir()
        (path / "history.json").write_text(json.dumps([{"epoch": i + 1, "valid": v} for i, v in enumerate(epochs)]))
        return path

    tie = {"HR@10": 0.1, "NDCG@10": 0.05, "validity": 0.5}
    runs = {
        "soft-alpha1": run("a1", [tie, {**tie, "HR@10": 0.05}]),
        "soft-alpha10": run("a10", [{**tie, "validity": 0.9}]),  # same HR/NDCG, more real titles
        "soft-alpha0.1": run("a01", [{**tie, "HR@10": 0.02}]),
    }
    # reference: HR@10 alone, a tie keeps the earlier run of the sweep
    assert _best_on_validation(runs) == "soft-alpha1"
    # train.selection_tie_break: NDCG@10, then validity, break the tie
    assert _best_on_validation(runs, "HR@10", tie_break=True) == "soft-alpha10"
    # train.selection_metric is honoured (not a hard-coded HR@10)
    runs["soft-alpha0.1"] = run("a01b", [{**tie, "HR@10": 0.02, "NDCG@10": 0.09}])
    assert _best_on_validation(runs, "NDCG@10") == "soft-alpha0.1"


def test_report_names_the_decoding_dtype_and_warns_when_rows_differ():
    from softrec.report import _dtype_lines

    def rows(**dtypes):
        return {name: {"metrics": {"decoded_in": d} if d else {}} for name, d in dtypes.items()}

    assert _dtype_lines(rows(sft="bfloat16", soft="bfloat16", sasrec=None)) == ["- LLM rows decoded in bfloat16."]
    (warning,) = _dtype_lines(rows(sft="bfloat16", soft="float32"))
    assert warning.startswith("- WARNING") and "sft: bfloat16, soft: float32" in warning
    assert _dtype_lines(rows(sft=None)) == []  # results from before metrics.json recorded it
