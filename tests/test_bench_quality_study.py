"""`softrec bench quality` study rows soft-t{E}-{rule} (#15): names, plan, results, study.png."""

from __future__ import annotations

import json

import pytest

from softrec.bench import quality
from softrec.bench.quality import suites
from softrec.cli import main as cli_main


def test_study_names_parse_and_label():
    assert suites.teacher_of("soft-t1-quoted") == (1, "quoted")
    assert suites.teacher_of("soft-tbest-raw") == (None, "raw")
    for name in ("soft-t0-raw", "soft-t1-sample", "soft-tlast-raw", "soft-t1", "soft-a1", "soft"):
        assert suites.teacher_of(name) is None, name
    assert suites.label("soft-t1-quoted") == "BIGRec-SOFT teacher epoch 1, quoted"
    assert suites.label("soft-tbest-grounded") == "BIGRec-SOFT teacher best epoch, grounded"
    assert "sample" not in suites.STUDY_RULES and suites.SUITES["cpu-medium"].study_alpha == 1.0


def test_plan_distils_the_epoch_by_the_rule_then_trains_soft_on_it(tmp_path):
    steps = quality.plan(suites.SUITES["cpu-medium"], tmp_path, ["amazon-books"],
                         ["sft", "soft-t1-quoted", "soft-tbest-raw"], [])
    root, data = tmp_path / "amazon-books", str(tmp_path / "data" / "amazon-books")
    assert [(s.kind, s.owner) for s in steps] == [
        ("prepare", "data"), ("train-llm", "sft"), ("evaluate-llm", "sft"), ("distill", "soft-t1-quoted"),
        # soft-tbest-raw is the sweep's alpha-1 run (SOFT at the study alpha on SFT's own targets): a
        # headline row, so it trains before the study row
        ("distill", "soft-a1"), ("train-llm", "soft-a1"), ("evaluate-llm", "soft-a1"),
        ("train-llm", "soft-t1-quoted"), ("evaluate-llm", "soft-t1-quoted")]
    distill, train, evaluate = steps[3], steps[7], steps[8]
    teacher = root / "teacher-t1-quoted"
    assert distill.argv[:11] == ["distill", "--run-dir", str(root / "sft"), "--data", data, "--mode", "quoted",
                                 "--epoch", "1", "--out", str(teacher)]
    assert distill.output == teacher / "distilled.jsonl"
    assert train.argv[:9] == ["train", "--method", "soft", "--alpha", "1", "--distilled", str(teacher),
                              "--out", str(root / "soft-t1-quoted")]
    assert train.argv[-2:] == ["--epochs", "4"], "the suite's soft_epochs cap, as for the alpha rows"
    assert train.argv.count("--epochs") == 1, "the cap replaces the suite's epochs, not repeats them"
    assert evaluate.argv[:3] == ["evaluate", "--run-dir", str(root / "soft-t1-quoted")]
    assert evaluate.output == quality.planning.eval_folder(tmp_path, "amazon-books", "soft-t1-quoted") / "metrics.json"
    assert steps[4].output == root / "sft" / "distilled.jsonl" and "--epoch" not in steps[4].argv


def test_best_raw_outside_the_sweep_trains_its_own_row_on_sfts_targets(tmp_path):
    import dataclasses

    suite = dataclasses.replace(suites.SUITES["cpu-medium"], alphas=(10.0,))
    assert suites.sweep_twin("soft-tbest-raw", suite) is None
    steps = quality.plan(suite, tmp_path, ["amazon-books"], ["sft", "soft-tbest-raw"], [])
    distill, train = steps[3:5]
    root = tmp_path / "amazon-books"
    assert distill.output == root / "sft" / "distilled.jsonl" and "--mode" not in distill.argv
    assert train.argv[:9] == ["train", "--method", "soft", "--alpha", "1", "--distilled", str(root / "sft"),
                              "--out", str(root / "soft-tbest-raw")]


def test_study_rows_reuse_the_sft_steps_of_the_main_rows(tmp_path):
    steps = quality.plan(suites.SUITES["cpu-medium"], tmp_path, ["amazon-books"],
                         ["soft-a1", "soft-t1-raw", "soft-t2-grounded"], [])
    assert [s.owner for s in steps if s.kind == "train-llm"] == ["sft", "soft-a1", "soft-t1-raw", "soft-t2-grounded"]
    assert len({s.command for s in steps}) == len(steps)


def test_every_datasets_headline_rows_run_before_any_study_row(tmp_path):
    """A many-hour suite answers SOFT vs SFT on all its datasets first; the study rows' training and
    evaluation follow, each dataset's in its own order. Their distillations stay beside SFT: a new
    machine has SFT's targets (`--restore`) but not its weights."""
    steps = quality.plan(suites.SUITES["cpu-medium"], tmp_path, ["amazon-books", "ml-100k"],
                         ["sft", "soft-t1-raw", "soft-a1"], [])
    assert [(s.dataset, s.kind, s.owner) for s in steps if s.kind != "prepare"] == [
        ("amazon-books", "train-llm", "sft"), ("amazon-books", "evaluate-llm", "sft"),
        ("amazon-books", "distill", "soft-t1-raw"), ("amazon-books", "distill", "soft-a1"),
        ("amazon-books", "train-llm", "soft-a1"), ("amazon-books", "evaluate-llm", "soft-a1"),
        ("ml-100k", "train-llm", "sft"), ("ml-100k", "evaluate-llm", "sft"),
        ("ml-100k", "distill", "soft-t1-raw"), ("ml-100k", "distill", "soft-a1"),
        ("ml-100k", "train-llm", "soft-a1"), ("ml-100k", "evaluate-llm", "soft-a1"),
        ("amazon-books", "train-llm", "soft-t1-raw"), ("amazon-books", "evaluate-llm", "soft-t1-raw"),
        ("ml-100k", "train-llm", "soft-t1-raw"), ("ml-100k", "evaluate-llm", "soft-t1-raw"),
    ]


def test_unknown_study_name_is_a_one_line_error_naming_the_pattern(tmp_path, capsys):
    assert cli_main(["bench", "quality", "--out", str(tmp_path), "--methods", "sft,soft-t1-sample", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "soft-t1-sample" in err and "soft-t{E}-{rule}" in err and "\n" not in err


def test_a_teacher_adapter_stands_in_for_an_epoch_the_sft_run_did_not_keep(tmp_path, capsys):
    adapter = tmp_path / "sft-step32"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    base = ["bench", "quality", "--suite", "cpu-medium", "--out", str(tmp_path / "out"), "--datasets", "amazon-books",
            "--methods", "sft,soft-t1-raw,soft-t2-raw", "--dry-run"]
    assert cli_main([*base, "--teacher-adapter", f"amazon-books:1={adapter}"]) == 0
    distills = [line for line in capsys.readouterr().out.splitlines() if line.startswith("softrec distill")]
    assert len(distills) == 2
    assert f"--adapter {adapter}" in distills[0] and "--epoch" not in distills[0]
    assert "--epoch 2" in distills[1] and "--adapter" not in distills[1], "other epochs still come from RUN/epochs"
    for bad, named in ((f"amazon-books:x={adapter}", "expected DATASET:E=DIR"),
                       (f"ml-100k:1={adapter}", "not one of the datasets"),
                       (f"amazon-books:1={tmp_path}", "adapter_config.json")):
        assert cli_main([*base, "--teacher-adapter", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and "\n" not in err, err


def _finished_row(out, method, hits, n=20, extra=None):
    """A row's evaluation as `softrec evaluate` leaves it: `hits` of n samples ranked 1."""
    folder = quality.planning.eval_folder(out, "amazon-books", method)
    folder.mkdir(parents=True)
    rows = [{"sample_id": str(i), "target_rank": 1 if i < hits else None} for i in range(n)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"validity": 1.0}))
    for name, payload in (extra or {}).items():
        (out / "amazon-books" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "amazon-books" / name).write_text(json.dumps(payload))


def test_results_record_the_teacher_and_keep_study_rows_out_of_the_average(tmp_path):
    out = tmp_path / "bench"
    history = [{"epoch": 1, "best": True, "valid": {"HR@10": 0.10, "NDCG@10": 0.05, "validity": 0.8}},
               {"epoch": 2, "best": True, "valid": {"HR@10": 0.15, "NDCG@10": 0.07, "validity": 0.9}},
               {"epoch": 3, "best": False, "valid": {"HR@10": 0.12, "NDCG@10": 0.06, "validity": 0.9}}]
    _finished_row(out, "sft", 4, extra={"sft/history.json": history})
    _finished_row(out, "soft-sd-only", 5)
    manifest = {"artefacts": {"distilled.jsonl": {"exact_title_share": 0.75, "target_hit_share": 0.25}}}
    _finished_row(out, "soft-t1-quoted", 6, extra={"teacher-t1-quoted/manifest.json": manifest})
    _finished_row(out, "soft-a1", 3)  # soft-tbest-raw's run: the sweep's alpha 1 (not asked for here)
    # a teacher distilled by an older softrec (no shares in its manifest): computed from its targets
    from conftest import make_tiny_dataset

    from softrec.data.prompts import response_text

    data = make_tiny_dataset(out / "data" / "amazon-books")
    train = data.split("train")[:4]
    truth = [data.titles[s.target] for s in train]
    texts = [response_text(truth[0]), response_text(truth[1]), response_text(truth[3]), "no title at all"]
    (out / "amazon-books" / "sft" / "distilled.jsonl").write_text(
        "".join(json.dumps({"sample_id": s.sample_id, "target_text": t}) + "\n" for s, t in zip(train, texts, strict=True)))
    assert cli_main(["bench", "quality", "--suite", "cpu-medium", "--datasets", "amazon-books", "--out", str(out),
                     "--methods", "sft,soft-sd-only,soft-t1-quoted,soft-tbest-raw", "--resamples", "200",
                     "--report-only"]) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = payload["results"]["amazon-books"]["methods"]
    assert set(payload["average_gains"]) == {"soft-sd-only/sft"} == set(payload["results"]["amazon-books"]["gains"])
    quoted, best = rows["soft-t1-quoted"], rows["soft-tbest-raw"]
    assert quoted["gains"]["HR@10"] == pytest.approx(50.0) and best["gains"]["HR@10"] == pytest.approx(-25.0)
    assert quoted["vs_sft_baseline"] == "sft" and set(quoted["vs_sft"]["HR@10"]) == {"diff", "low", "high", "p", "detectable_percent", "chance_at_paper_gain",
                                                                         "relative_low_percent", "relative_high_percent"}
    assert quoted["teacher"] == {"epoch": 1, "rule": "quoted", "exact_title_share": 0.75, "target_hit_share": 0.25,
                                 "valid_epoch": 1, "valid_HR@10": 0.10, "valid_NDCG@10": 0.05, "valid_validity": 0.8}
    assert best["teacher"]["epoch"] is None and best["teacher"]["valid_epoch"] == 2  # SFT's kept epoch
    assert best["same_run_as"] == "soft-a1" and "(the BIGRec-SOFT alpha=1 run)" in best["label"]
    assert "soft-a1" not in rows and "soft" not in rows, "read for the study row only"
    # 3 of 4 targets are titles (the third another sample's), 2 are the true next item
    assert (best["teacher"]["exact_title_share"], best["teacher"]["target_hit_share"]) == (0.75, 0.5)
    text = (out / "results.md").read_text()
    study = text[text.index("When does SOFT help?"):]
    assert text.count("teacher best epoch, raw") == study.count("teacher best epoch, raw") == 1, "the study section only"
    assert "When does SOFT help?" in text and "| BIGRec-SOFT teacher epoch 1, quoted | 0.750 | 0.250 | 0.1000 |" in text
    import matplotlib.image

    assert matplotlib.image.imread(out / "study.png").shape[:2] == (540, 1320)  # 11 x 4.5 in at 120 dpi
    # the plotted points carry the gain's interval with SFT's values resampled too (4 of 20 hits): wider
    # above than the paired difference's interval over a fixed SFT value
    points = {(p["rule"], p["epoch"]): p for p in quality.study.study_points(payload["results"])}
    assert set(points) == {("quoted", 1), ("raw", None)}
    vs = quoted["vs_sft"]["HR@10"]
    low, high = points["quoted", 1]["low"], points["quoted", 1]["high"]
    assert (low, high) == (vs["relative_low_percent"], vs["relative_high_percent"]) and high > vs["high"] / 0.2 * 100
    assert points["quoted", 1]["low"] <= points["quoted", 1]["gain"] <= points["quoted", 1]["high"]
    assert points["quoted", 1]["exact_title_share"] == 0.75 and points["raw", None]["valid_HR@10"] == 0.15

    # without study rows the report writes no study.png, and removes the earlier one
    assert cli_main(["bench", "quality", "--suite", "cpu-medium", "--datasets", "amazon-books", "--out", str(out),
                     "--methods", "sft,soft-sd-only", "--resamples", "200", "--report-only"]) == 0
    assert not (out / "study.png").exists()

    # the headline average carries its stratified bootstrap interval, from the sweep's chosen run
    assert cli_main(["bench", "quality", "--suite", "cpu-medium", "--datasets", "amazon-books", "--out", str(out),
                     "--methods", "sft,soft-a1,soft-sd-only", "--resamples", "200", "--report-only"]) == 0
    averages = json.loads((out / "results.json").read_text())["average_gains"]
    for pair, gain in (("soft/sft", -25.0), ("soft-sd-only/sft", 25.0)):  # 3 and 5 hits of 20 against 4
        assert averages[pair]["mean_percent"] == pytest.approx(gain)
        assert averages[pair]["low_percent"] < gain < averages[pair]["high_percent"]
    assert "- **Over 1 dataset(s)**, the paper's measure" in (out / "results.md").read_text()


def _study_row(epoch, rule, valid_hr, share, gain, low, high):
    teacher = {"epoch": epoch, "rule": rule, "valid_HR@10": valid_hr, "valid_epoch": epoch or 2,
               "exact_title_share": share}
    vs = {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0, "relative_low_percent": low, "relative_high_percent": high}
    return {"teacher": teacher, "gains": {"HR@10": gain}, "vs_sft": {"HR@10": vs}}


def test_study_paragraph_sets_rules_and_teachers_side_by_side_and_names_significant_rows():
    methods = {"sft": {"metrics": {"HR@10": {"value": 0.1}}},
               "soft-tbest-raw": _study_row(None, "raw", 0.098, 0.705, 0.0, -12.0, 14.0),
               "soft-tbest-grounded": _study_row(None, "grounded", 0.098, 1.0, 20.0, 5.0, 36.0),
               "soft-t1-raw": _study_row(1, "raw", 0.082, 0.6, -30.0, -45.0, -12.0)}
    lines = quality.study.study_finding_lines({"amazon-industrial": {"n": 1000, "methods": methods}})
    [paragraph] = [line for line in lines if line.startswith("- **amazon-industrial**")]
    assert "(1000 test samples, 3 study row(s))" in paragraph
    assert ("teacher best epoch (2), by target rule: raw +0% [-12%, +14%], 70.5% exact titles, "
            "grounded +20% [+5%, +36%], 100.0% exact titles") in paragraph
    # the raw rule's teachers, weakest (lowest validation HR@10) first
    assert ("raw targets, by teacher: epoch 1 -30% [-45%, -12%] (teacher validation HR@10 0.082), "
            "best epoch (2) +0% [-12%, +14%] (teacher validation HR@10 0.098)") in paragraph
    assert paragraph.endswith("Intervals that exclude 0: above SFT: best epoch (2) grounded; below SFT: epoch 1 raw.")
    assert any("cannot test a trend" in line for line in lines)
    # one study row: no side-by-side clause, the row stated alone
    alone = quality.study.study_finding_lines({"d": {"n": 9, "methods": {k: methods[k] for k in ("sft", "soft-t1-raw")}}})
    assert "teacher epoch 1, raw targets -30% [-45%, -12%], 60.0% exact titles. Intervals that exclude 0: below SFT" in alone[2]
    assert quality.study.study_finding_lines({"d": {"n": 9, "methods": {"sft": methods["sft"]}}}) == []


def test_study_plot_dodges_one_teachers_rules_and_keeps_its_value_in_view(tmp_path, monkeypatch):
    import softrec.bench

    figures = []
    monkeypatch.setattr(softrec.bench, "write_png", lambda fig, path: figures.append(fig) or path)
    methods = {"sft": {"metrics": {"HR@10": {"value": 0.1}}},
               "soft-tbest-raw": _study_row(None, "raw", 0.098, 0.705, 0.0, -12.0, 14.0),
               "soft-tbest-grounded": _study_row(None, "grounded", 0.098, 1.0, 20.0, 5.0, 36.0)}
    quality.study.study_plot({"d": {"n": 9, "methods": methods}}, tmp_path / "study.png")
    left = figures[0].axes[0]
    low, high = left.get_xlim()
    assert low < 0.098 < high and high - low < 0.05, "a window around the one teacher, not matplotlib's default"
    xs = sorted({float(line.get_xdata()[0]) for line in left.lines if len(line.get_xdata()) == 1})  # marker, caps
    assert len(xs) == 2 and xs[0] < 0.098 < xs[1], "the two rules' markers sit either side of the teacher's value"
