"""`softrec bench quality`: the plan (same test samples, dependencies), resumption and the results files."""

from __future__ import annotations

import json

import pytest

from softrec.bench import quality
from softrec.bench.quality import report, results, suites
from softrec.cli import main as cli_main


def _plan(tmp_path, methods, suite="cpu-small", datasets=("ml-100k",)):
    return quality.plan(quality.SUITES[suite], tmp_path, list(datasets), list(methods), [])


def test_every_row_is_evaluated_on_the_same_samples_with_the_same_grounding(tmp_path):
    steps = _plan(tmp_path, quality.METHODS)
    evaluations = [s for s in steps if s.kind.startswith("evaluate")]
    assert sorted(s.owner for s in evaluations) == sorted(quality.METHODS)
    for step in evaluations:
        tail = step.argv[step.argv.index("--split"):]
        assert tail[:8] == ["--split", "test", "--grounding", "l2", "--quiet", "--no-preflight", "--limit", "100"]
    assert len({s.command for s in steps}) == len(steps), "a shared step (SFT teacher, SASRec) runs once"


def test_dependencies_come_first(tmp_path):
    steps = _plan(tmp_path, ["llara-soft"])
    order = [(s.kind, s.owner) for s in steps]
    assert order == [("prepare", "data"), ("train-classic", "sasrec"), ("evaluate-classic", "sasrec"),
                     ("train-llm", "llara-sft"), ("evaluate-llm", "llara-sft"), ("distill", "llara-soft"),
                     ("train-llm", "llara-soft"), ("evaluate-llm", "llara-soft")]
    soft_train = steps[6].argv
    assert soft_train[soft_train.index("--distilled") + 1] == str(tmp_path / "ml-100k" / "llara-sft")
    assert soft_train[soft_train.index("--sasrec-run") + 1] == str(tmp_path / "ml-100k" / "sasrec")
    assert soft_train[soft_train.index("--train-samples") + 1] == "128"


def test_the_sweeps_other_soft_runs_fork_from_its_first_and_are_priced_one_epoch_less(tmp_path):
    from softrec.bench.quality.timeplan import Assumptions, DatasetShape, _Costs

    steps = _plan(tmp_path, ["soft-a1", "soft-a10", "soft-a100", "soft-sd-only", "soft-tbest-quoted"], suite="cpu-medium", datasets=("books",))
    trains = {s.owner: s.argv for s in steps if s.kind == "train-llm"}
    first = str(tmp_path / "books" / "soft-a1")
    assert "--fork-from" not in trains["soft-a1"] and "--fork-from" not in trains["sft"]
    assert "--fork-from" not in trains["soft-tbest-quoted"]  # other targets: another epoch 1
    evaluations = {s.owner: s.argv for s in steps if s.kind == "evaluate-llm"}
    for owner in ("soft-a10", "soft-a100", "soft-sd-only"):
        assert trains[owner][trains[owner].index("--fork-from") + 1] == first
        # kept the shared epoch 1: the first run's evaluation is theirs (copied when the tensors agree)
        assert evaluations[owner][evaluations[owner].index("--reuse-from") + 1] == first
    assert not any("--reuse-from" in evaluations[o] for o in ("soft-a1", "sft", "soft-tbest-quoted"))
    shape = DatasetShape(train=4096, valid=512, test=1000, pool=20000, titles=5000, prompt_tokens=130, train_tokens=150)
    suite = quality.SUITES["cpu-medium"]
    price = _Costs(suite, shape, Assumptions()).seconds
    seconds = {s.owner: price(s) for s in steps if s.kind == "train-llm"}
    assert seconds["soft-a10"] == seconds["soft-sd-only"] < seconds["soft-a1"]


def test_steps_recorded_before_the_soft_cap_replaced_the_suites_epochs_still_count(tmp_path):
    import shlex

    steps = _plan(tmp_path, ["soft-a1"], suite="cpu-medium", datasets=["amazon-books"])
    sft, soft = (next(s for s in steps if s.kind == "train-llm" and s.owner == o) for o in ("sft", "soft-a1"))
    assert soft.argv.count("--epochs") == 1 and soft.argv[-2:] == ["--epochs", "4"]
    assert quality.planning.canonical_command(sft.command) == sft.command  # one --epochs: unchanged
    # how the plan wrote it until 2026-12-07: the suite's --epochs 7 where SFT has it, the cap at the end
    assert sft.argv[sft.argv.index("--epochs"):][:4] == ["--epochs", "7", "--effective-batch", "32"]
    at = soft.argv.index("--effective-batch")
    legacy = [*soft.argv[:at], "--epochs", "7", *soft.argv[at:]]
    (tmp_path / "steps.json").write_text(json.dumps({shlex.join(["softrec", *legacy]): {"kind": "train-llm"}}))
    soft.output.parent.mkdir(parents=True)
    soft.output.write_text("[]")
    log = quality.execution.StepLog(tmp_path)
    assert log.finished(soft)
    log.mark(sft, 1.0)  # written back as recorded: the softrec that recorded it still finds the step
    assert set(json.loads((tmp_path / "steps.json").read_text())) == {shlex.join(["softrec", *legacy]), sft.command}


def test_launcher_prefixes_llm_training_and_evaluation_only(tmp_path):
    steps = quality.plan(quality.SUITES["gpu"], tmp_path, ["ml-100k"], ["sft", "sasrec"], ["torchrun", "--nproc_per_node", "2"])
    for step in steps:
        launched = step.command.startswith("torchrun --nproc_per_node 2 -m softrec ")
        assert launched == (step.kind in ("train-llm", "evaluate-llm")), step.command
    assert not any("--limit" in s.argv or "--train-samples" in s.argv for s in steps), "gpu = the reference sizes"


def test_unknown_method_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["bench", "quality", "--out", str(tmp_path), "--methods", "sft,bert4rec", "--dry-run"]) == 2
    assert "bert4rec" in capsys.readouterr().err
    for row in ("soft-a", "soft-ax", "soft-a1x"):  # not an alpha: refused before float() would raise
        assert cli_main(["bench", "quality", "--out", str(tmp_path), "--methods", row, "--dry-run"]) == 2
        assert row in capsys.readouterr().err
    assert cli_main(["bench", "quality", "--suite", "cpu-medium", "--out", str(tmp_path), "--methods", "soft-a10,soft-a0.5",
                     "--dry-run"]) == 0  # one run of the sweep, or an alpha beside it
    commands = capsys.readouterr().out
    assert "--alpha 10 " in commands and "--alpha 0.5 " in commands


def test_relative_gain_and_its_average():
    rows = {m: {"metrics": {g: {"value": v} for g in suites.GAIN_METRICS}} for m, v in (("sft", 0.04), ("soft", 0.05))}
    rows["sft"]["metrics"]["HR@1"]["value"] = 0.0
    gains = results._gains(rows)["soft/sft"]
    assert gains["HR@10"] == pytest.approx(25.0) and gains["HR@1"] is None
    average = results.average_gains({"a": {"gains": {"soft/sft": gains}}})["soft/sft"]
    assert average["mean_percent"] == pytest.approx(25.0) and average["undefined"] == 1 and average["terms"] == 9


def test_gain_sections_put_the_headline_soft_vs_sft_first():
    gains = {pair: {m: 1.0 for m in suites.GAIN_METRICS} for pair in ("llara-soft/llara-sft", "soft-sd-only/sft", "soft/sft")}
    averages = {pair: {"mean_percent": 1.0, "terms": 10, "undefined": 0} for pair in gains}
    headings = [line for line in report._gain_lines({"d": {"gains": gains}}, averages) if line.startswith("### ")]
    assert headings == ["### BIGRec-SOFT vs BIGRec-SFT", "### BIGRec-SOFT-sd-only vs BIGRec-SFT", "### LLaRA-SOFT vs LLaRA-SFT"]


def test_the_table_says_what_its_samples_can_detect():
    def row(label, hr10, vs=None):
        return {"label": label, "metrics": {"HR@10": {"value": hr10}, "NDCG@10": {"value": hr10 / 2}},
                **({"vs_sft": vs} if vs else {})}

    vs = {"HR@10": {"detectable_percent": 76.3, "chance_at_paper_gain": 0.282},
          "NDCG@10": {"detectable_percent": None, "chance_at_paper_gain": None}}  # not estimable: left out
    dataset = {"n": 1000, "methods": {"sft": row("BIGRec-SFT", 0.009), "soft": row("BIGRec-SOFT", 0.009, vs)}}
    (line, blank) = report._sensitivity_lines(dataset)
    assert line.startswith("What 1000 samples can detect (BIGRec-SOFT vs BIGRec-SFT")
    assert "HR@10 (SFT 0.0090): +76% is detected 80% of the time, the paper's +37.59% 28% of the time." in line
    assert "NDCG@10" not in line and blank == ""
    assert report._sensitivity_lines({"n": 1000, "methods": {"sft": row("BIGRec-SFT", 0.009)}}) == []


def test_a_row_whose_evaluation_is_a_siblings_says_so():
    def row(label, **summary):
        return {"label": label, "summary": summary}

    dataset = {"methods": {"soft-a1": row("BIGRec-SOFT alpha=1"),
                           "soft-a10": row("BIGRec-SOFT alpha=10", copied_from="/runs/medium/books/soft-a1")}}
    assert report._copied_lines(dataset) == [
        "BIGRec-SOFT alpha=10 kept the epoch it shares with `soft-a1` (the same weights, byte for byte): "
        "its test evaluation is that run's, copied.", ""]
    assert report._copied_lines({"methods": {"soft-a1": row("BIGRec-SOFT alpha=1")}}) == []


def test_the_finding_says_when_the_whole_sweep_is_one_model():
    """Forked SOFT runs that all kept the shared epoch 1 print identical rows: the finding says why."""
    def row(label, **summary):
        return {"label": label, "summary": summary, "run_dir": f"/runs/{label}"}

    first = "/runs/BIGRec-SOFT alpha=1"
    dataset = {"methods": {"soft-a1": row("BIGRec-SOFT alpha=1"),
                           "soft-a10": row("BIGRec-SOFT alpha=10", copied_from=first),
                           "soft-sd-only": row("BIGRec-SOFT-sd-only", copied_from=first),
                           "sft": row("BIGRec-SFT")}}
    chosen = {"chosen": "soft-a1"}
    assert report._one_model(dataset, chosen) == (
        " Every other SOFT run (BIGRec-SOFT alpha=10, BIGRec-SOFT-sd-only) kept the epoch it shares with it: "
        "one model, SOFT's first epoch (lambda = 1, the distilled targets only).")
    dataset["methods"]["soft-a100"] = row("BIGRec-SOFT alpha=100")  # a later epoch won: a model of its own
    assert report._one_model(dataset, chosen) == ""
    assert report._one_model({"methods": {"soft-a1": row("BIGRec-SOFT alpha=1")}}, chosen) == ""


def test_the_finding_states_the_answer_in_words_with_its_intervals_and_conditions():
    def row(label, hr10, ndcg10, vs=None, **extra):
        return {"label": label, "metrics": {"HR@10": {"value": hr10}, "NDCG@10": {"value": ndcg10}},
                **({"vs_sft": vs} if vs else {}), **extra}

    def diff(d, low, high):
        return {"diff": d, "low": low, "high": high, "p": 0.5}

    tie = {"HR@10": diff(0.0, -0.011, 0.011), "NDCG@10": diff(-0.0027, -0.0100, 0.0044)}
    better = {"HR@10": diff(0.02, 0.005, 0.035), "NDCG@10": diff(0.001, -0.002, 0.004)}
    results = {
        "industrial": {"n": 1000, "methods": {"sft": row("BIGRec-SFT", 0.086, 0.0542), "soft": row(
            "BIGRec-SOFT (alpha=1, best on validation so far; alpha 10 not finished)", 0.086, 0.0515, tie,
            chosen="soft-a1", pending=["soft-a10"])}},
        "books": {"n": 1000, "methods": {"sft": row("BIGRec-SFT", 0.04, 0.02), "soft": row(
            "BIGRec-SOFT (alpha=10, chosen on validation)", 0.06, 0.021, better, chosen="soft-a10")}},
        "no-soft-yet": {"n": 1000, "methods": {"sft": row("BIGRec-SFT", 0.04, 0.02)}},
    }
    heading, blank, tie_line, better_line, blank2, conditions, blank3 = report._finding_lines(results)
    assert heading == "## Finding" and blank == blank2 == blank3 == ""
    assert tie_line.startswith("- **industrial** (1000 test samples): BIGRec-SOFT alpha=1 vs BIGRec-SFT: "
                               "no significant difference on HR@10 or NDCG@10.")
    assert "HR@10 0.0860 -> 0.0860 (+0.0000 [-0.0110, +0.0110], -13% to +13% relative)" in tie_line
    assert "The paper's +37.59% lies above the interval on HR@10 and NDCG@10." in tie_line
    assert tie_line.endswith("Provisional: alpha 10 not finished.")
    assert "BIGRec-SOFT alpha=10 vs BIGRec-SFT: significantly higher on HR@10." in better_line
    assert "+12% to +88% relative" in better_line and "above the interval on NDCG@10." in better_line
    assert "Provisional" not in better_line and "one seed" in conditions
    assert report._finding_lines({"no-soft-yet": results["no-soft-yet"]}) == []
    # over all datasets: the paper's averaged gain with its interval, read against +37.59%
    results["industrial"]["gains"] = results["books"]["gains"] = {"soft/sft": {}}
    average = {"mean_percent": -4.6, "low_percent": -12.0, "high_percent": 3.5, "terms": 20, "undefined": 0}
    overall = report._finding_lines(results, {"soft/sft": average})[4]
    assert overall.startswith("- **Over 2 dataset(s)**") and "**-4.6%** [-12.0%, +3.5%] (20 terms" in overall
    assert overall.endswith("the interval includes 0, and the paper's +37.59% lies above it.")
    average.update(low_percent=30.0, high_percent=60.0)
    assert "the interval above 0, and the paper's +37.59% lies inside it." in report._finding_lines(results, {"soft/sft": average})[4]
    assert len(report._finding_lines(results, {"soft/sft": {"mean_percent": 1.0, "terms": 2}})) == 7, "no interval, no line"


def test_the_per_metric_relative_interval_resamples_sfts_values_too():
    import numpy as np

    from softrec.bench.quality.results import _relative_intervals
    from softrec.bench.quality.study import relative_bounds
    from softrec.metrics import stratified_mean_gain

    rng = np.random.default_rng(2)
    base = (rng.random((500, 3)) < [0.03, 0.02, 0.0]).astype(float)  # few SFT hits: the case that matters
    soft = (rng.random((500, 3)) < [0.03, 0.02, 0.01]).astype(float)
    vs = {"HR@10": {"low": -0.01, "high": 0.01}, "NDCG@10": {"low": -0.01, "high": 0.01}, "HR@1": {}}
    _relative_intervals(vs, ["HR@10", "NDCG@10", "HR@1"], base, soft, 1000)
    expected = stratified_mean_gain([(base[:, [0]], soft[:, [0]])], resamples=1000)
    assert relative_bounds(vs["HR@10"], base[:, 0].mean()) == pytest.approx(expected[1:3])
    assert "relative_low_percent" in vs["NDCG@10"] and vs["HR@1"] == {}, "only the table's metrics"
    fixed = (100 * -0.01 / base[:, 0].mean(), 100 * 0.01 / base[:, 0].mean())
    assert relative_bounds({"low": -0.01, "high": 0.01}, base[:, 0].mean()) == pytest.approx(fixed)  # an older table
    base[:, 1] = 0  # SFT never scored: no relative gain, no interval
    vs["NDCG@10"] = {"low": 0.0, "high": 0.0}
    _relative_intervals(vs, ["HR@10", "NDCG@10", "HR@1"], base, soft, 1000)
    assert "relative_low_percent" not in vs["NDCG@10"]


def test_the_sweep_choice_says_its_margin_in_validation_hits():
    soft = {"chosen": "soft-a10", "chosen_from": {"soft-a1": [0.0117, 0.01, 0.3], "soft-a10": [0.0156, 0.01, 0.1],
                                                  "soft-a100": [0.0117, 0.02, 0.2]}}
    line = report._selection_line(soft, 256)
    assert line.endswith("Top-10 hits on the 256 validation samples: soft-a1 3, soft-a10 4, soft-a100 3; a margin of 1 hit(s).")
    soft["chosen_from"]["soft-a10"][0] = 0.0117
    assert "a margin of 0 hit(s) (a tie on HR@10" in report._selection_line(soft, 256)
    assert report._selection_line(soft, None) == "SOFT row: soft-a10 (best validation HR@10, then NDCG@10, validity)."


def test_the_average_gain_interval_is_a_stratified_paired_bootstrap():
    import numpy as np

    from softrec.metrics import paired_bootstrap, stratified_mean_gain

    rng = np.random.default_rng(1)
    a, b = (rng.random((300, 1)) < 0.05).astype(float), (rng.random((300, 1)) < 0.07).astype(float)
    mean, low, high, terms = stratified_mean_gain([(a, b)], resamples=2000)
    assert mean == pytest.approx(100 * (b.mean() - a.mean()) / a.mean()) and terms == 1
    # one dataset, one metric: the ratio of each resample's means, on the same draws
    index = np.random.default_rng(0).integers(0, 300, size=(2000, 300))
    ratios = (b[index, 0].mean(axis=1) - a[index, 0].mean(axis=1)) / a[index, 0].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(100 * ratios, [2.5, 97.5])))
    # the baseline's own uncertainty widens it against holding the baseline fixed
    _, fixed_low, fixed_high, _ = paired_bootstrap(a, b, resamples=2000)
    assert high - low > 100 * (fixed_high[0] - fixed_low[0]) / a.mean()
    # a column where the baseline scored 0 drops out; identical rows give a zero-width interval
    zero = np.zeros((300, 1))
    assert stratified_mean_gain([(np.hstack([a, zero]), np.hstack([a, b]))], resamples=500)[1:] == (0.0, 0.0, 1)
    # two strata: the mean is over all their terms, and its interval narrows against either alone
    c, d = (rng.random((300, 1)) < 0.05).astype(float), (rng.random((300, 1)) < 0.07).astype(float)
    both, alone = stratified_mean_gain([(a, b), (c, d)], resamples=2000), stratified_mean_gain([(c, d)], resamples=2000)
    assert both[0] == pytest.approx((mean + alone[0]) / 2) and both[3] == 2
    assert both[2] - both[1] < min(high - low, alone[2] - alone[1])


def test_smoke_suite_end_to_end_then_resumes_without_rerunning(tmp_path, bench_steps_in_process, capsys):
    calls = bench_steps_in_process
    out = tmp_path / "bench"
    methods = "sasrec,icl-0,sft,soft"
    assert cli_main(["bench", "quality", "--suite", "smoke", "--out", str(out), "--methods", methods,
                     "--resamples", "200", "--save", str(tmp_path / "saved")]) == 0
    assert not (out / "running.json").exists(), "removed when its step ended"
    etas = [line.split(" ETA ", 1)[1] for line in capsys.readouterr().out.splitlines() if " ETA " in line]
    assert etas[0].endswith("(planned, no long step timed yet)") and all("h for" in eta for eta in etas)  # a time plan
    payload = json.loads((out / "results.json").read_text())
    rows = payload["results"]["demo"]["methods"]
    assert set(rows) == {"sasrec", "icl-0", "sft", "soft"} and payload["results"]["demo"]["n"] == 8
    hr10 = rows["soft"]["metrics"]["HR@10"]
    assert hr10["low"] <= hr10["value"] <= hr10["high"]
    assert set(rows["soft"]["vs_sft"]["HR@10"]) == {"diff", "low", "high", "p", "detectable_percent", "chance_at_paper_gain"} and "vs_sft" not in rows["sft"]
    assert rows["soft"]["vs_sft_baseline"] == "sft"
    assert "soft/sft" in payload["results"]["demo"]["gains"]
    text = (out / "results.md").read_text()
    assert "BIGRec-SOFT" in text and "softrec distill --run" in text and "Relative gain" in text
    commands = [step["command"].split()[1] for step in payload["steps"]]  # in the order they ran, not sorted
    assert commands.index("data") < commands.index("train") < commands.index("distill")
    distilled = payload["results"]["demo"]["distilled"]  # how good SOFT's targets were, from the SFT run's manifest
    assert 0 <= distilled["target_hit_share"] <= distilled["exact_title_share"] <= 1
    assert f"{distilled['exact_title_share']:.1%} are exact catalogue titles" in text
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(out / "results.png")  # a PNG that decodes, not just a non-empty file
    assert image.shape[:2] == (540, 1560)  # the 13 x 4.5 in figure at 120 dpi
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # bars, error bars, text: not blank
    curves = matplotlib.image.imread(out / "curves.png")  # the one dataset's panel: SFT's and SOFT's curves
    assert curves.shape[:2] == (540, 780) and len(np.unique(curves.reshape(-1, curves.shape[-1]), axis=0)) > 20
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"results.json", "results.md", "results.png", "curves.png",
                                                                "predictions", "carry"}
    import gzip

    saved = {p.name: p for p in (tmp_path / "saved" / "predictions").iterdir()}
    assert set(saved) == {f"demo-{m}.jsonl.gz" for m in rows} | {"machines.json", "FORMAT.md"}  # every row
    # ... recomputable without softrec: FORMAT.md's standard-library code gives the table's numbers
    code = saved["FORMAT.md"].read_text().split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the documented snippet itself is what is under test
    for method, row in rows.items():
        for metric, fn in (("HR@10", scope["hr"]), ("NDCG@10", scope["ndcg"])):
            assert scope["metric"](saved[f"demo-{method}.jsonl.gz"], fn) == pytest.approx(row["metrics"][metric]["value"])
    diff, low, high = scope["paired_interval"](saved["demo-sft.jsonl.gz"], saved["demo-soft.jsonl.gz"], resamples=2000)
    assert diff == pytest.approx(rows["soft"]["vs_sft"]["HR@10"]["diff"]) and low <= diff <= high
    from softrec.bench import cpu_model

    machines = json.loads(saved["machines.json"].read_text())  # and the machine each one ran on
    assert set(machines) == {f"demo-{m}.jsonl.gz" for m in rows}
    assert all(len(ran) == 1 and ran[0].startswith(cpu_model()) for ran in machines.values())
    assert f"Steps ran on: {cpu_model()}" in text
    folder = out / "demo" / "soft" / "eval"
    published = next(p for p in folder.rglob("predictions.jsonl"))
    assert gzip.decompress(saved["demo-soft.jsonl.gz"].read_bytes()) == published.read_bytes()

    # killed after the SFT evaluation: the rerun redoes only what had not finished
    log = json.loads((out / "steps.json").read_text())
    unfinished = [c for c in log if f"{out}/demo/soft " in c]
    assert len(unfinished) == 2, unfinished
    for command in unfinished:
        del log[command]
    (out / "steps.json").write_text(json.dumps(log))
    calls.clear()
    assert cli_main(["bench", "quality", "--suite", "smoke", "--out", str(out), "--methods", methods,
                     "--resamples", "200"]) == 0
    assert [c[:2] for c in calls] == [["train", "--method"], ["evaluate", "--run-dir"]]
    assert calls[0][2] == "soft" and calls[1][2] == str(out / "demo" / "soft")
    retrained = next(info for command, info in json.loads((out / "steps.json").read_text()).items()
                     if info["kind"] == "train-llm" and info["owner"] == "soft")
    assert retrained["share_timed"] == 0.0  # its checkpoints had it all: the rerun only resumed and saved
    rows = json.loads((out / "results.json").read_text())["results"]["demo"]["methods"]
    assert rows["soft"]["seconds_partial"] and not rows["sft"]["seconds_partial"]
    text = (out / "results.md").read_text()
    soft_row = next(line for line in text.splitlines() if line.startswith("| BIGRec-SOFT |"))
    assert soft_row.endswith("* |") and "* a resumed training" in text

    # --report-only runs nothing and reports the finished rows of the methods asked for
    calls.clear()
    (out / "results.json").unlink()
    log = json.loads((out / "steps.json").read_text())
    for info in log.values():  # steps recorded before steps.json named machines
        info.pop("ran_on")
    (out / "steps.json").write_text(json.dumps(log))
    assert cli_main(["bench", "quality", "--suite", "smoke", "--out", str(out), "--methods", "sasrec,sft,llara-sft",
                     "--resamples", "200", "--report-only"]) == 0
    assert calls == []
    rows = json.loads((out / "results.json").read_text())["results"]["demo"]["methods"]
    assert set(rows) == {"sasrec", "sft"} and rows["sft"]["ran_on"][0].startswith("not recorded")


@pytest.mark.slow
def test_smoke_suite_under_torchrun_two_processes(tmp_path):
    """The gpu suite's multi-process path, on CPU (gloo): about 45 s on 2 cores."""
    import shutil
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "bench"
    assert cli_main(["bench", "quality", "--suite", "smoke", "--out", str(out), "--methods", "icl-0,sft",
                     "--launcher", f"{torchrun} --nproc_per_node 2", "--resamples", "200"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["results"]["demo"]["methods"]) == {"icl-0", "sft"}
    assert all(" --nproc_per_node 2 -m softrec " in s["command"] for s in payload["steps"] if s["kind"].endswith("llm"))


def _run_row(epochs: list[tuple[float, bool]]) -> dict:
    history = [{"epoch": i, "HR@10": hr, "NDCG@10": 0.0, "validity": 0.5, "best": best}
               for i, (hr, best) in enumerate(epochs, 1)]
    return {"label": "run", "history": history}


def test_the_alpha_choice_is_provisional_while_the_sweep_is_unfinished():
    from softrec.bench.quality.results import _choose_alpha

    rows = {"sft": _run_row([(0.01, True)]), "soft-a1": _run_row([(0.02, True)]), "soft-a10": _run_row([(0.03, True)])}
    _choose_alpha(rows, ["soft-a100"])
    assert rows["soft"]["chosen"] == "soft-a10" and rows["soft"]["pending"] == ["soft-a100"]
    assert "so far; alpha 100 not finished" in rows["soft"]["label"]
    del rows["soft"]
    _choose_alpha(rows)
    assert rows["soft"]["label"] == "BIGRec-SOFT (alpha=10, chosen on validation)"


def test_validation_curves_star_only_the_kept_epoch():
    from softrec.bench.quality.report import _history_lines

    # best-so-far flags as training records them: epochs 1-3 each improved, 4 and 5 did not
    row = _run_row([(0.004, True), (0.016, True), (0.020, True), (0.008, False), (0.012, False)])
    lines = _history_lines({"books": {"methods": {"sft": row}}})
    (table_row,) = [line for line in lines if line.startswith("| run | 0.")]
    assert table_row.count("*") == 1 and "0.0200 / 0.50 *" in table_row


def test_validation_curves_show_lambda_for_soft_runs_only():
    from softrec.bench.quality.report import _history_lines

    sft, soft = _run_row([(0.01, True), (0.02, True)]), _run_row([(0.01, True), (0.03, True)])
    for e in sft["history"]:
        e["lambda"] = 0.0  # SFT's history records lambda 0 at every epoch
    for e, (lam, d) in zip(soft["history"], [(0.0, 2.5), (0.4, 1.5)], strict=True):
        e.update({"lambda": lam, "distance": d})
    sft["label"], soft["label"] = "sft-run", "soft-run"
    lines = _history_lines({"books": {"methods": {"sft": sft, "soft-a1": soft}}})
    sft_line, soft_line = (next(line for line in lines if line.startswith(f"| {name} |")) for name in ("sft-run", "soft-run"))
    assert "λ" not in sft_line and "0.0300 / 0.50, λ 0.40, d 1.5 *" in soft_line


def test_validation_curves_leave_out_the_classic_models(tmp_path):
    """SASRec/GRU4Rec also record a validation curve (tens of epochs, no validity): the LLM curves
    table and plot would read 'nan' in dozens of columns."""
    from softrec.bench.quality.report import _history_lines, curves_plot

    sft, sasrec = _run_row([(0.01, True), (0.02, True)]), _run_row([(0.03, True)] * 30)
    sft["label"], sasrec["label"] = "sft-run", "sasrec-run"
    results = {"books": {"methods": {"sft": sft, "sasrec": sasrec}}}
    lines = _history_lines(results)
    assert any(line.startswith("| sft-run |") for line in lines) and not any("sasrec-run" in line for line in lines)
    assert "epoch 3" not in "\n".join(lines)
    assert curves_plot(results, tmp_path / "curves.png") is not None
