"""`--save DIR` keeps the finished LLM runs without weights in DIR/carry/; `--restore DIR` writes them
back on another machine (here: the --out folder moved away) and the suite goes on from there."""

from __future__ import annotations

import json
import shutil

from softrec.cli import main as cli_main

SMOKE = ["bench", "quality", "--suite", "smoke", "--resamples", "200"]


def _metrics(out, method):
    return json.loads((out / "results.json").read_text())["results"]["demo"]["methods"][method]["metrics"]


def test_a_saved_suite_is_restored_without_weights_and_goes_on_without_redoing_its_runs(tmp_path, bench_steps_in_process, capsys):
    calls = bench_steps_in_process
    out, saved = tmp_path / "bench", tmp_path / "saved"
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sasrec,sft,soft", "--save", str(saved)]) == 0
    assert "kept in" in capsys.readouterr().out
    index = json.loads((saved / "carry" / "carry.json").read_text())
    assert set(index["runs"]) == {"demo/sasrec", "demo/sft", "demo/soft"}  # the classic row too, without weights
    kept = {p.relative_to(saved / "carry").as_posix() for p in (saved / "carry").rglob("*") if p.is_file()}
    assert "demo/sft/distilled.jsonl.gz" in kept and "demo/soft/history.json" in kept
    assert not any(part in name for name in kept for part in ("adapter", "checkpoints", "epochs", "safetensors"))
    assert not any(name.endswith("predictions.jsonl.gz") for name in kept)  # taken from saved/predictions/
    from softrec.bench import cpu_model

    for folder in ("demo/sft", "demo/sft/eval/test-l2-limit8", "demo/soft"):  # each names its machine
        machines = json.loads((saved / "carry" / folder / "ran_on.json").read_text())["ran_on"]
        assert machines and all(m.startswith(cpu_model()) for m in machines)
    before, sasrec = _metrics(out, "soft"), _metrics(out, "sasrec")

    shutil.move(out, tmp_path / "elsewhere")  # another machine: --out is gone, the saved folder is not
    calls.clear()
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sasrec,sft,soft,soft-sd-only",
                     "--restore", str(saved)]) == 0
    assert "restored from" in capsys.readouterr().out
    trained = [c[2] for c in calls if c[0] == "train"]
    assert trained == ["soft-sd-only"]  # SASRec, SFT and SOFT restored; sd-only trains on the restored targets
    assert not (out / "demo" / "sft" / "adapter").exists()
    assert _metrics(out, "soft") == before and _metrics(out, "sasrec") == sasrec
    log = json.loads((out / "steps.json").read_text())
    restored = [info for info in log.values() if "restored_from" in info]
    assert len(restored) == 7 and all(info["restored_from"] == str(saved) for info in restored)

    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft,soft", "--status"]) == 0
    assert f"restored from {saved} (no weights here)" in capsys.readouterr().out
    calls.clear()  # a second restore leaves existing runs alone
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft,soft", "--restore", str(saved), "--report-only"]) == 0
    assert "restored from" in capsys.readouterr().out and calls == []


def test_a_restore_into_another_out_or_from_an_edited_save_is_refused(tmp_path, bench_steps_in_process, capsys):
    out, saved = tmp_path / "bench", tmp_path / "saved"
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft", "--save", str(saved)]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    assert cli_main([*SMOKE, "--out", str(other), "--methods", "sft", "--restore", str(saved), "--report-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(out) in err and "same" not in err or "restore into that path" in err
    assert "\n" not in err and not (other / "demo").exists()

    shutil.rmtree(out)
    (saved / "carry" / "demo" / "sft" / "history.json").write_text("[]")  # edited after the save
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft", "--restore", str(saved), "--report-only"]) == 2
    assert "history.json differs from its checksum" in capsys.readouterr().err
    assert not (out / "demo" / "sft").exists()
    assert cli_main([*SMOKE, "--out", str(out), "--restore", str(tmp_path), "--report-only"]) == 2
    assert "no carry/carry.json" in capsys.readouterr().err


def test_steps_runs_only_the_kinds_asked_for(tmp_path, bench_steps_in_process, capsys):
    calls = bench_steps_in_process
    out = tmp_path / "bench"
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft", "--steps", "prepare,train-llm"]) == 0
    assert [c[:3] for c in calls] == [["data", "prepare", "--dataset"], ["train", "--method", "sft"]]
    assert "no finished evaluations to report yet" in capsys.readouterr().out  # not an error with --steps
    calls.clear()
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft,soft-tbest-quoted", "--steps", "distill"]) == 0
    assert [c[0] for c in calls] == ["distill"]  # the quoted teacher's targets, no SOFT training
    assert (out / "demo" / "teacher-tbest-quoted" / "distilled.jsonl").is_file()
    assert cli_main([*SMOKE, "--out", str(out), "--steps", "distil"]) == 2
    assert "--steps: unknown ['distil']" in capsys.readouterr().err


def test_a_study_teacher_is_kept_and_a_run_still_training_is_not(tmp_path, bench_steps_in_process, capsys):
    out, saved = tmp_path / "bench", tmp_path / "saved"
    methods = ["--methods", "sft,soft-tbest-quoted"]
    assert cli_main([*SMOKE, "--out", str(out), *methods, "--steps", "prepare,train-llm,evaluate-llm"]) != 0  # no targets yet
    capsys.readouterr()
    assert cli_main([*SMOKE, "--out", str(out), *methods, "--steps", "distill"]) == 0
    (out / "demo" / "soft-tbest-quoted").mkdir(parents=True)  # as if its training had started
    (out / "demo" / "soft-tbest-quoted" / "run.json").write_text("{}")
    assert cli_main([*SMOKE, "--out", str(out), *methods, "--report-only", "--save", str(saved)]) == 0
    index = json.loads((saved / "carry" / "carry.json").read_text())
    assert set(index["runs"]) == {"demo/sft", "demo/teacher-tbest-quoted"}
    assert "distilled.jsonl" in index["runs"]["demo/teacher-tbest-quoted"]["files"]
    assert not any("adapter" in name for name in index["runs"]["demo/teacher-tbest-quoted"]["files"])


def test_a_save_whose_steps_repeat_epochs_is_restored_under_todays_commands(tmp_path, bench_steps_in_process, capsys):
    """Saves made before 2026-12-07 recorded SOFT's training as `--epochs 7 ... --epochs 4` (argparse
    keeps the last); restored, those steps must count as today's single `--epochs 4`, not rerun."""
    calls = bench_steps_in_process
    out, saved = tmp_path / "bench", tmp_path / "saved"
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft", "--save", str(saved)]) == 0
    index_path = saved / "carry" / "carry.json"
    index = json.loads(index_path.read_text())
    today = [c for c in index["steps"] if " train " in f" {c} "]
    assert len(today) == 1 and today[0].count("--epochs") == 1
    legacy = today[0].replace(" --epochs ", " --epochs 99 --epochs ", 1)
    index["steps"][legacy] = index["steps"].pop(today[0])
    index_path.write_text(json.dumps(index))
    shutil.rmtree(out)
    calls.clear()
    assert cli_main([*SMOKE, "--out", str(out), "--methods", "sft", "--restore", str(saved)]) == 0
    capsys.readouterr()
    assert not [c for c in calls if c[0] == "train"], "the restored training step counts as finished"
    assert legacy in json.loads((out / "steps.json").read_text()), "kept as recorded, for the softrec that wrote it"
