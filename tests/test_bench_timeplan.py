"""The gpu suites (reference scale with the alpha sweep; the 10-minute plan) and their time plan."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from softrec.bench import quality
from softrec.bench.quality import timeplan
from softrec.cli import main as cli_main

BIGREC = ["sft", "soft-a1", "soft-a10", "soft-a100"]


def _steps(tmp_path, suite, methods=None):
    return quality.plan(suite, tmp_path, ["amazon-books"], methods or suite.rows(), [])


def _argv_value(step, flag):
    """The value argparse keeps: the last occurrence (the SOFT epoch cap follows the suite's --epochs)."""
    at = [i for i, value in enumerate(step.argv) if value == flag]
    return step.argv[at[-1] + 1] if at else None


def test_gpu_suite_is_the_reference_protocol_with_the_alpha_sweep(tmp_path):
    gpu = quality.SUITES["gpu"]
    assert [m for m in gpu.rows() if m.startswith("soft")] == ["soft-a1", "soft-a10", "soft-a100", "soft-sd-only"]
    trains = [s for s in _steps(tmp_path, gpu) if s.kind == "train-llm"]
    assert {_argv_value(s, "--epochs") for s in trains} == {"7"}  # SOFT as long as SFT (SOFT.md section 6.5)
    assert {_argv_value(s, "--effective-batch") for s in trains} == {"256"}
    assert not any(flag in s.argv for s in _steps(tmp_path, gpu) for flag in ("--train-samples", "--valid-samples", "--limit"))
    alphas = {s.owner: _argv_value(s, "--alpha") for s in trains if s.owner.startswith("soft-a")}
    assert alphas == {"soft-a1": "1", "soft-a10": "10", "soft-a100": "100"}


def test_cpu_medium_is_untouched():
    medium = quality.SUITES["cpu-medium"]
    assert (medium.train_size, medium.valid_size, medium.test_limit, medium.epochs, medium.soft_epochs) == (1024, 256, None, 7, 4)
    assert medium.alphas == (1.0, 10.0, 100.0) and medium.micro_batch == 8 and medium.effective_batch == 32
    assert medium.setting("eval.batch_size", 32) == 32 and medium.setting("classic.epochs", 0) == "100"


def test_ten_minute_plan_keeps_the_reference_data_and_caps_soft(tmp_path):
    short = quality.SUITES["gpu-10min"]
    assert short.rows() == BIGREC and short.datasets == ("amazon-books",)
    steps = _steps(tmp_path, short)
    epochs = {s.owner: _argv_value(s, "--epochs") for s in steps if s.kind == "train-llm"}
    assert epochs == {"sft": "7", "soft-a1": "4", "soft-a10": "4", "soft-a100": "4"}
    assert not any("--limit" in s.argv or "--train-samples" in s.argv for s in steps)


def test_the_ten_minute_plan_fits_and_the_reference_scale_does_not():
    """The claims in suites.py and docs/scaling.md, under the stated (unmeasured) assumptions: the bench
    gets 570 s minus ~90 s of install and conversion minus the 45 s reserve in one device call."""
    def total(name, methods=None):
        suite = quality.SUITES[name]
        steps = quality.plan(suite, Path("/x"), ["amazon-books"], methods or suite.rows(), [])
        return sum(seconds for _, seconds in timeplan.estimate(steps, suite, timeplan.AMAZON_BOOKS))

    assert total("gpu-10min") <= 570 - 90 - 45
    assert total("gpu", BIGREC) > 600 and total("gpu") > 2 * total("gpu", BIGREC)


def test_small_model_steps_are_bounded_by_dispatch_not_flops(tmp_path):
    """Gemma 3 270M: a micro-step's FLOPs take ~25 ms at the table's rate, under the assumed 80 ms, so
    the training time grows exactly with the assumed step time (7 epochs x 64 micro-steps)."""
    short = quality.SUITES["gpu-10min"]
    sft = [s for s in _steps(tmp_path, short) if s.kind == "train-llm"][:1]
    base = timeplan.Assumptions()
    slower = dataclasses.replace(base, train_step_s=2 * base.train_step_s)
    (_, a), = timeplan.estimate(sft, short, timeplan.AMAZON_BOOKS, base)
    (_, b), = timeplan.estimate(sft, short, timeplan.AMAZON_BOOKS, slower)
    assert b - a == pytest.approx(7 * 64 * base.train_step_s)
    fast_gpu = dataclasses.replace(base, train_step_s=0.0, decode_step_s=0.0, process_s=0.0)
    (_, flops_only), = timeplan.estimate(sft, short, timeplan.AMAZON_BOOKS, fast_gpu)
    assert 0 < flops_only < a / 2  # what remains: generation at 10% of the table rate (validation)


def test_time_plan_flag_prints_estimates_on_a_gpu_or_this_cpu_and_reads_a_prepared_shape(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "bench"
    shutil.copytree(tiny_dataset.path, out / "data" / "demo")
    assert cli_main(["bench", "quality", "--suite", "gpu-10min", "--datasets", "demo,amazon-books", "--out", str(out),
                     "--time-plan", "H200"]) == 0
    text = capsys.readouterr().out
    assert f"demo (read from {out / 'data' / 'demo'}):" in text
    assert "amazon-books (amazon-books' shape (not prepared yet)):" in text
    assert text.count("UNMEASURED") == 2 and text.count(" total (") == 2
    assert not (out / "steps.json").exists()  # nothing ran
    with pytest.raises(SystemExit, match="2"):  # argparse: an unknown GPU, with the known ones listed
        cli_main(["bench", "quality", "--out", str(out), "--time-plan", "Z80"])
    assert "invalid choice: 'Z80' (choose from 'A10', 'A100', 'H100', 'H200'" in capsys.readouterr().err
    # on this CPU: its rates, and training priced on padded tokens
    assert cli_main(["bench", "quality", "--suite", "smoke", "--methods", "sft,soft", "--out", str(out),
                     "--time-plan", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "time plan on this CPU" in text and "UNMEASURED" not in text and " total (" in text
    shape = timeplan.DatasetShape.of(out / "data" / "demo", quality.SUITES["smoke"])
    assert shape.train_tokens > shape.prompt_tokens  # a random micro-batch pads to its longest sample


def _plan_seconds(suite, assume, methods=("sft", "soft-a1")):
    steps = quality.plan(suite, Path("/x"), ["amazon-books"], list(methods), [])
    return {(step.kind, step.owner): seconds for step, seconds in timeplan.estimate(steps, suite, timeplan.AMAZON_BOOKS, assume)}


def test_the_catalogue_is_embedded_once_per_dataset_and_distillation_covers_the_teachers_samples():
    from softrec.preflight import catalogue_flops, model_shape

    medium = quality.SUITES["cpu-medium"]
    fast = timeplan.Assumptions(gpu=timeplan.CPU, train_step_s=0.0, decode_step_s=0.0, rates=(1e12, 1e12, 1e12))
    slow_catalogue = dataclasses.replace(fast, rates=(1e12, 1e12, 1e9))
    a, b = _plan_seconds(medium, fast), _plan_seconds(medium, slow_catalogue)
    changed = {key: b[key] - a[key] for key in a if b[key] != a[key]}
    catalogue = catalogue_flops(model_shape(medium.model), timeplan.AMAZON_BOOKS.titles, timeplan.AMAZON_BOOKS.title_tokens)
    assert changed == {("train-llm", "sft"): pytest.approx(catalogue * (1 / 1e9 - 1 / 1e12))}  # SFT's first validation
    doubled = _plan_seconds(dataclasses.replace(medium, train_size=2048), fast)
    process = fast.process_s
    assert doubled[("distill", "soft-a1")] - process == pytest.approx(2 * (a[("distill", "soft-a1")] - process))


def test_eta_corrects_the_plan_by_what_each_kind_of_step_took(tmp_path):
    from softrec.bench.quality.execution import StepLog, eta
    from softrec.bench.quality.planning import PlannedStep

    kinds = {"a": "train-llm", "b": "train-llm", "c": "evaluate-llm", "d": "evaluate-llm"}
    steps = [PlannedStep(kind, "demo", name, [kind, name], tmp_path / name) for name, kind in kinds.items()]
    planned = dict(zip([s.command for s in steps], (1000.0, 1000.0, 500.0, 500.0), strict=True))
    log = StepLog(tmp_path)
    assert eta(steps, log, 0, planned) == "ETA 0:50 h for 4 step(s) (planned, no long step timed yet)"
    steps[0].output.touch()
    log.mark(steps[0], 2000.0)  # training took twice its plan: so will the other training, and (for now) evaluation
    assert eta(steps, log, 1, planned) == "ETA 1:06 h for 3 step(s) (planned x2 as measured so far)"
    steps[2].output.touch()
    log.mark(steps[2], 250.0)  # evaluation half its plan: only evaluation is corrected by it
    assert eta(steps, log, 1, planned) == "ETA 0:37 h for 2 step(s) (planned x1.5 as measured so far)"
    assert eta(steps, log, 1, {}) == "ETA unknown (no time plan)"
    steps[3].output.touch()
    log.mark(steps[3], 20.0)  # an evaluation copied from a sibling (--reuse-from): no rate
    assert eta(steps, log, 1, planned) == "ETA 0:33 h for 1 step(s) (planned x1.5 as measured so far)"
    assert eta(steps, StepLog(tmp_path / "new"), 0, dict.fromkeys(planned, 30_000.0)).startswith("ETA 33:20 h")
    # steps timed on another machine (restored) or another kind of CPU say nothing of this one's rate
    other = StepLog(tmp_path / "other")
    steps[0].output.touch()
    other.mark(steps[0], 500.0)
    other.done[steps[0].command]["restored_from"] = "saved"
    steps[2].output.touch()
    other.mark(steps[2], 100.0)
    other.done[steps[2].command]["ran_on"] = "Some Other CPU, 2 CPUs"
    assert eta(steps, other, 1, planned) == "ETA 0:25 h for 2 step(s) (planned, no long step timed yet)"
    classic = PlannedStep("train-classic", "demo", "sasrec", ["train", "sasrec"], tmp_path / "sasrec")
    classic.output.touch()
    other.mark(classic, 100.0)  # a classic model 10x faster than planned: no rate for the LLM's steps
    assert eta(steps, other, 1, {**planned, classic.command: 1000.0}) == \
        "ETA 0:25 h for 2 step(s) (planned, no long step timed yet)"


def test_a_short_step_does_not_rescale_the_long_ones(tmp_path):
    from softrec.bench.quality.execution import StepLog, eta
    from softrec.bench.quality.planning import PlannedStep

    prepare, train = (PlannedStep(kind, "demo", kind, [kind], tmp_path / kind) for kind in ("prepare", "train-llm"))
    log = StepLog(tmp_path)
    prepare.output.touch()
    log.mark(prepare, 1.0)  # 8x faster than planned: process start, nothing about training's rate
    assert eta([prepare, train], log, 1, {prepare.command: 8.0, train.command: 3600.0}) == \
        "ETA 1:00 h for 1 step(s) (planned, no long step timed yet)"


def test_status_lists_each_step_and_counts_what_checkpoints_have_trained(tmp_path, capsys):
    from softrec.bench.quality.execution import StepLog, status
    from softrec.bench.quality.planning import PlannedStep

    run = tmp_path / "demo" / "sft"
    prepare = PlannedStep("prepare", "demo", "data", ["data"], tmp_path / "data" / "dataset.json")
    train = PlannedStep("train-llm", "demo", "sft", ["train"], run / "history.json")
    evaluate = PlannedStep("evaluate-llm", "demo", "sft", ["evaluate"], run / "eval" / "metrics.json")
    steps = [prepare, train, evaluate]
    prepare.output.parent.mkdir(parents=True)
    prepare.output.touch()
    StepLog(tmp_path).mark(prepare, 3.0)
    checkpoint = run / "checkpoints" / "checkpoint-50"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 50, "max_steps": 200}))
    planned = {prepare.command: 8.0, train.command: 4000.0, evaluate.command: 600.0}
    assert status(steps, tmp_path, planned).splitlines() == [
        "[1/3] demo data prepare: done in 3 s",
        "[2/3] demo sft train-llm: trained 50/200 optimizer steps",
        "[3/3] demo sft evaluate-llm: to run",
        "ETA 1:00 h for 2 step(s) (planned, no long step timed yet)",  # 3/4 of the training + the evaluation
        f"Nothing is running this suite (no process holds {tmp_path / '.suite.lock'}): run the same command "
        "without --status to resume it.",
    ]


def test_one_process_runs_a_suite_and_status_names_the_step_it_runs(tmp_path):
    """A second suite process on the same folder is refused at once (it would start the trainings the
    first is running); --status tells a live suite from one whose process has gone."""
    from softrec.bench.quality import execution
    from softrec.bench.quality.planning import PlannedStep
    from softrec.errors import UserError

    run = tmp_path / "demo" / "sft"
    train = PlannedStep("train-llm", "demo", "sft", ["train"], run / "history.json")
    (tmp_path / execution.RUNNING).write_text(json.dumps({"command": train.command, "pid": 4242,
                                                          "started": "2026-12-06T06:00:00+00:00"}))
    with execution.suite_lock(tmp_path):
        with pytest.raises(UserError, match=r"another `softrec bench quality` is running this suite \(pid 4242"):
            execution.execute([train], tmp_path, {})
        lines = execution.status([train], tmp_path, {train.command: 100.0}).splitlines()
        assert lines[0] == "[1/1] demo sft train-llm: running since 2026-12-06T06:00:00+00:00 (suite pid 4242)"
        assert not any(line.startswith("Nothing is running") for line in lines)
    lines = execution.status([train], tmp_path, {train.command: 100.0}).splitlines()
    assert lines[0] == "[1/1] demo sft train-llm: to run" and lines[-1].startswith("Nothing is running this suite")

    # history.json is written after every epoch: an unfinished training shows its validation so far
    run.mkdir(parents=True)
    train.output.write_text(json.dumps([{"epoch": 1, "best": True, "valid": {"HR@10": 0.0977}},
                                        {"epoch": 2, "best": False, "valid": {"HR@10": 0.0859}}]))
    lines = execution.status([train], tmp_path, {train.command: 100.0}).splitlines()
    assert lines[0] == "[1/1] demo sft train-llm: to run; validation HR@10 by epoch 0.0977*, 0.0859"


def test_a_plan_that_cannot_be_estimated_leaves_the_eta_unknown(tmp_path):
    suite = dataclasses.replace(quality.SUITES["smoke"], model=str(tmp_path / "no-such-model"))
    steps = quality.plan(suite, tmp_path, ["demo"], ["sft"], [])
    assert timeplan.RunPlan(steps, suite, tmp_path)() == {}


def test_a_resumed_training_is_timed_for_the_part_it_ran(tmp_path):
    from softrec.bench.quality.execution import StepLog, eta, status
    from softrec.bench.quality.planning import PlannedStep

    first, second = (PlannedStep("train-llm", "demo", name, [name], tmp_path / name / "history.json") for name in ("a", "b"))
    for step in (first, second):
        step.output.parent.mkdir()
    first.output.touch()
    log = StepLog(tmp_path)
    log.mark(first, 900.0, share=0.25)  # resumed at 3/4: 900 s for a quarter of a 1-hour plan
    planned = {first.command: 3600.0, second.command: 3600.0}
    assert eta([first, second], log, 1, planned) == "ETA 1:00 h for 1 step(s) (planned x1 as measured so far)"
    assert status([first, second], tmp_path, planned).splitlines()[0] == \
        "[1/2] demo a train-llm: done in 15 min (the last 25% of it, resumed)"


def test_the_run_records_the_cpu_rate_it_timed_and_status_reuses_it_on_that_machine(tmp_path, monkeypatch):
    from softrec import preflight

    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 100e9)
    assert timeplan.suite_cpu_rate(tmp_path, record=False) == 100e9
    assert not (tmp_path / timeplan.CPU_RATE).exists()  # --status writes nothing
    assert timeplan.suite_cpu_rate(tmp_path, record=True) == 100e9  # the run, between steps
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 40e9)  # timed now, beside the running suite
    assert timeplan.suite_cpu_rate(tmp_path, record=False) == 100e9
    saved = json.loads((tmp_path / timeplan.CPU_RATE).read_text())
    (tmp_path / timeplan.CPU_RATE).write_text(json.dumps({**saved, "machine": "another CPU"}))
    assert timeplan.suite_cpu_rate(tmp_path, record=False) == 40e9  # another machine's reading is not used


def test_a_forked_rows_evaluation_is_priced_as_a_copy_once_it_kept_the_shared_epoch(tmp_path):
    """SOFT alpha 10 and 100 fork alpha 1's epoch 1; when one keeps that epoch its evaluation is
    alpha 1's, copied (`--reuse-from`), so the ETA must not plan 15 minutes of decoding for it."""
    import json

    suite = quality.SUITES["cpu-medium"]
    fast = timeplan.Assumptions(gpu=timeplan.CPU, train_step_s=0.0, decode_step_s=0.0, rates=(1e12, 1e12, 1e12))
    steps = quality.plan(suite, tmp_path, ["amazon-books"], ["soft-a1", "soft-a10"], [])
    evaluation = next(s for s in steps if s.kind == "evaluate-llm" and s.owner == "soft-a10")
    assert "--reuse-from" in evaluation.argv

    def seconds(**info) -> float:
        run_dir = tmp_path / "amazon-books" / "soft-a10"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps({"forked_at_epoch": 1, **info}))
        rows = timeplan.estimate(steps, suite, timeplan.AMAZON_BOOKS, fast)
        return next(planned for step, planned in rows if step.command == evaluation.command)

    full = seconds(status="training", best_epoch=None)
    assert full > 2 * fast.process_s  # 1000 test prompts decoded
    assert seconds(status="finished", best_epoch=2) == full  # a later epoch won: its own tensors
    assert seconds(status="finished", best_epoch=1) == fast.process_s


def test_the_cpu_time_plan_uses_the_suites_recorded_rate_or_warns_that_a_busy_cpu_times_low(tmp_path, monkeypatch):
    """Timed beside a running suite, a 2-core Xeon's matmul read 5x low and the plan 5x long."""
    import psutil

    from softrec import preflight

    suite = quality.SUITES["smoke"]
    steps = quality.plan(suite, tmp_path, ["demo"], ["sft"], [])
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 97.0)
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 20e9)
    busy = timeplan.describe(steps, suite, tmp_path, ["demo"], timeplan.CPU)
    assert busy.startswith("note: other work is using 97% of this CPU") and "reads low" in busy

    assert timeplan.suite_cpu_rate(tmp_path, record=True) == 20e9  # what the run records between its steps
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: pytest.fail("timed again"))
    recorded = timeplan.describe(steps, suite, tmp_path, ["demo"], timeplan.CPU)
    assert "other work" not in recorded
    assert recorded.split("\n", 1)[1] == busy.split("\n\n", 1)[1].split("\n", 1)[1]  # the same rate, same plan

    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 3.0)
    (tmp_path / timeplan.CPU_RATE).unlink()
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 20e9)
    assert "other work" not in timeplan.describe(steps, suite, tmp_path, ["demo"], timeplan.CPU)
