"""Run integrity, ownership and security (issue #17): a command never writes over or deletes files
it did not create, never runs code from a run directory, refuses artefacts made from other inputs,
and leaves files readable as the umask allows. Each test is one case of the issue's probe."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from softrec.cli import main
from softrec.config import load_config
from softrec.errors import UserError
from softrec.runs import MARKER, RunDir, atomic_dir, atomic_write_json, claim_dir

EVAL = ["--split", "test", "--grounding", "l2", "--num-beams", "2", "--max-new-tokens", "6", "--quiet"]
TRAIN = ["--model", "tiny", "--epochs", "1", "--micro-batch", "8", "--effective-batch", "8",
         "--set", "train.validate_every_epoch=false", "--set", "train.bf16=off"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture()
def trained(tiny_dataset, tmp_path, umask_022):
    """A finished one-epoch SFT run of the tiny model made by `softrec train`."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(out), *TRAIN]) == 0
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("softrec: error: "), err  # one line, no traceback
    return err[0]


# ---------------------------------------------------------------- ownership of --out
def test_train_refuses_a_foreign_out_and_leaves_it_untouched(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "logs" / "old.log").write_text("mine too")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(out), *TRAIN]) == 2
    assert "softrec did not create it" in _error_line(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no .lock, no marker
    assert (out / "notes.txt").read_text() == "keep me"


def test_train_refuses_out_equal_to_its_data(tiny_dataset, capsys):
    data = tiny_dataset.path
    assert main(["train", "--data", str(data), "--out", str(data), *TRAIN]) == 2
    assert "dataset directory, not a run directory" in _error_line(capsys)
    assert not (data / "run.json").exists()


def test_out_below_a_file_is_one_line(tiny_dataset, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "file" / "run"), *TRAIN]) == 2
    _error_line(capsys)


def test_icl_evaluate_refuses_a_foreign_out(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.yaml", "metrics.json", "results.csv"):
        (out / name).write_text("user's own\n")
    assert main(["evaluate", "--method", "icl", "--model", "tiny", "--data", str(tiny_dataset.path),
                 "--out", str(out), *EVAL]) == 2
    assert "softrec did not create it" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "results.csv"]
    for name in ("config.yaml", "metrics.json", "results.csv"):
        assert (out / name).read_text() == "user's own\n"


def test_prepare_keeps_files_the_user_added_and_unrelated_siblings(tmp_path, capsys):
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    config = DataConfig(dataset="demo", train_size=16, valid_size=4, test_size=4)
    out = tmp_path / "P"
    prepare_dataset(config, out)
    (tmp_path / ".P.old").mkdir()
    (tmp_path / ".P.old" / "keep").write_text("x")
    (out / "my-notes.md").write_text("mine")
    with pytest.raises(UserError, match="holds files softrec did not write"):
        prepare_dataset(config, out, force=True)
    assert (out / "my-notes.md").read_text() == "mine"
    (out / "my-notes.md").unlink()
    prepare_dataset(config, out, force=True)
    assert (tmp_path / ".P.old" / "keep").read_text() == "x"
    assert json.loads((out / MARKER).read_text())["kind"] == "dataset"


def test_report_refuses_to_delete_user_files(tmp_path):
    from softrec.report import build_report

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "draft.md").write_text("mine")
    with pytest.raises(UserError, match="holds files softrec did not write"):
        build_report(tmp_path, {})
    assert (tmp_path / "report" / "draft.md").read_text() == "mine"


def test_claim_dir_accepts_new_empty_and_own(tmp_path):
    claim_dir(tmp_path / "new", "run")
    claim_dir(tmp_path / "new", "run")
    with pytest.raises(UserError, match="softrec run directory, not a dataset directory"):
        claim_dir(tmp_path / "new", "dataset")
    (tmp_path / "empty").mkdir()
    claim_dir(tmp_path / "empty", "run")
    assert json.loads((tmp_path / "empty" / MARKER).read_text()) == {"kind": "run"}


# ---------------------------------------------------------------- weights
def test_evaluate_and_recommend_refuse_a_run_whose_adapter_was_deleted(trained, capsys):
    import shutil

    shutil.rmtree(trained / "adapter")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "no trained weights" in _error_line(capsys)
    assert main(["recommend", "--run", str(trained), "--history", "Dune"]) == 2
    assert "no trained weights" in _error_line(capsys)
    assert not (trained / "metrics.json").exists()


def test_deleting_the_manifest_does_not_switch_checks_off(trained, capsys):
    (trained / "manifest.json").unlink()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "manifest.json: missing" in _error_line(capsys)


class _WritesAFile:
    """Unpickling this calls open(path, "w"): a file appears if the pickle is ever run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_classic_checkpoint_is_refused_without_running_it(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "sasrec", "--data", str(tiny_dataset.path), "--out", str(out),
            "--set", "classic.epochs=1", "--set", "classic.hidden=16", "--set", "classic.max_len=4"]
    assert main(args) == 0
    pwned = tmp_path / "pwned"
    key = torch.load(out / "checkpoints" / "classic_last.pt", weights_only=True)["key"]
    torch.save({"key": key, "payload": _WritesAFile(pwned)}, out / "checkpoints" / "classic_last.pt")
    (out / "manifest.json").unlink()  # so the finished run is not simply reused
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "classic_last.pt: holds objects other than tensors" in _error_line(capsys)
    assert not pwned.exists()


def test_truncated_classic_checkpoint_is_one_line(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "sasrec", "--data", str(tiny_dataset.path), "--out", str(out),
            "--set", "classic.epochs=1", "--set", "classic.hidden=16", "--set", "classic.max_len=4"]
    assert main(args) == 0
    ckpt = out / "checkpoints" / "classic_last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "classic_last.pt: unreadable" in _error_line(capsys)


# ---------------------------------------------------------------- permissions and links
def _modes(root):
    return {p: stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if not p.is_symlink()}


def test_run_files_are_readable_by_group_and_others(trained):
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 0
    modes = _modes(trained)
    for name in ("run.json", "manifest.json", "config.yaml", "metrics.json", "predictions.jsonl",
                 "adapter", "adapter/adapter_model.safetensors", MARKER):
        assert trained / name in modes, name
    unreadable = {str(p): oct(m) for p, m in modes.items() if m & 0o044 != 0o044}
    assert not unreadable
    dirs = {str(p): oct(m) for p, m in modes.items() if p.is_dir() and m & 0o055 != 0o055}
    assert not dirs


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_symlink_out_of_the_run_directory_is_refused(trained, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (trained / "eval").mkdir(exist_ok=True)
    (trained / "eval" / "test-l2").symlink_to(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "symbolic link out of the run directory" in _error_line(capsys)
    assert not any(elsewhere.iterdir())


def test_leftover_temporary_files_are_removed_under_the_lock(tmp_path):
    run = tmp_path / "run"
    with RunDir(run):
        pass
    (run / "eval").mkdir()
    leftover = run / "eval" / ".metrics.json.abcd1234.tmp"
    leftover.write_text("half")
    user = run / ".my.tmp"
    user.write_text("not ours")
    with RunDir(run):
        pass
    assert not leftover.exists() and user.exists()


# ---------------------------------------------------------------- inputs' keys
def test_evaluate_refuses_data_re_prepared_since_training(trained, tiny_dataset, capsys):
    from conftest import make_tiny_dataset

    make_tiny_dataset(tiny_dataset.path, seed=1)  # same directory, other content
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "differs from the run's" in _error_line(capsys)


def test_invalid_run_json_is_one_line(trained, capsys):
    (trained / "run.json").write_text("{not json")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "run.json: not valid JSON" in _error_line(capsys)


def _retrain(tiny_dataset, run, seed: str = "7") -> None:
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(run), *TRAIN, "--seed", seed,
                 "--set", "train.learning_rate=0.01"]) == 0


def test_compare_refuses_predictions_of_the_weights_before_retraining(trained, tiny_dataset, capsys):
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 0
    assert main(["compare", str(trained), str(trained), "--resamples", "10"]) == 0
    _retrain(tiny_dataset, trained)
    capsys.readouterr()
    assert main(["compare", str(trained), str(trained), "--resamples", "10"]) == 2
    assert "computed from other weights" in _error_line(capsys)
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 0  # recomputed, not reused
    assert "up to date" not in capsys.readouterr().out
    assert main(["compare", str(trained), str(trained), "--resamples", "10"]) == 0


def test_distilled_targets_of_the_previous_adapter_are_refused(trained, tiny_dataset, capsys):
    from softrec.inference import distill as stage

    config = load_config(None, ["soft.distill_max_new_tokens=4", "soft.distill_beams=2", "eval.batch_size=8"])
    stage.distill(trained, tiny_dataset, config, progress=False)
    assert len(stage.load_distilled(trained)) == 24
    _retrain(tiny_dataset, trained)
    with pytest.raises(UserError, match="computed from other weights"):
        stage.load_distilled(trained)
    capsys.readouterr()
    assert main(["train", "--method", "soft", "--distilled", str(trained), "--data", str(tiny_dataset.path),
                 "--out", str(trained.parent / "soft"), *TRAIN]) == 2
    assert "distilled.jsonl: computed from other weights" in _error_line(capsys)


def test_kill_between_the_two_latest_copies_leaves_a_pair_compare_refuses(trained, monkeypatch, capsys):
    import softrec.runs as runs

    assert main(["evaluate", "--run", str(trained), *EVAL, "--limit", "4"]) == 0
    real, calls = runs.atomic_write_bytes, []

    def killed_on_the_second_copy(path, data):
        if path.name == "predictions.jsonl" and path.parent == trained:
            raise KeyboardInterrupt("killed")
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", killed_on_the_second_copy)
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 130
    monkeypatch.setattr(runs, "atomic_write_bytes", real)
    assert trained / "metrics.json" in calls  # metrics.json is from the second evaluation already
    capsys.readouterr()
    assert main(["compare", str(trained), str(trained), "--resamples", "10"]) == 2
    assert "metrics.json: corrupted" in _error_line(capsys)
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 0  # the rerun publishes the pair again
    assert main(["compare", str(trained), str(trained), "--resamples", "10"]) == 0


# ---------------------------------------------------------------- SOFT with empty generations
def test_soft_training_survives_empty_generations(trained, tiny_dataset, monkeypatch, capsys):
    import softrec.inference.generate as generate
    from softrec.inference import distill as stage

    config = load_config(None, ["soft.distill_max_new_tokens=4", "soft.distill_beams=2", "eval.batch_size=8"])
    stage.distill(trained, tiny_dataset, config, progress=False)
    # the model emits only EOS: every probe generation is the empty string
    monkeypatch.setattr(generate, "generate_beams", lambda model, tok, prompts, **k: [[""] for _ in prompts])
    out = trained.parent / "soft"
    assert main(["train", "--method", "soft", "--distilled", str(trained), "--data", str(tiny_dataset.path),
                 "--out", str(out), *TRAIN, "--set", "soft.probe_size=4"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_embedding_empty_texts():
    from softrec.inference.grounding import embed_texts
    from softrec.models.registry import load_backbone

    model, tokenizer = load_backbone("tiny")
    both = embed_texts(model, tokenizer, ["", "Dune"])
    assert both.shape[0] == 2 and torch.isfinite(both).all()
    torch.testing.assert_close(embed_texts(model, tokenizer, [""]), both[:1])


def test_a_failed_training_does_not_stay_at_training(tiny_dataset, tmp_path, monkeypatch):
    import softrec.training.trainer as trainer

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "build_trainer", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", "--data", str(tiny_dataset.path), "--out", str(out), *TRAIN])
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "boom" in info["error"]


# ---------------------------------------------------------------- checkpoints
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tiny_dataset, tmp_path):
    from softrec.training.checkpoints import SEAL, last_complete_checkpoint

    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset.path), "--out", str(out), "--model", "tiny", "--epochs", "2",
            "--micro-batch", "8", "--effective-batch", "8", "--set", "train.validate_every_epoch=false",
            "--set", "train.bf16=off", "--set", "train.checkpoint_every=1"]
    assert main(args) == 0
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2 and all((c / SEAL).is_file() for c in checkpoints)
    newest, previous = checkpoints[-1], checkpoints[-2]
    assert last_complete_checkpoint(out / "checkpoints") == newest
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 100])
    assert last_complete_checkpoint(out / "checkpoints") == previous
    (out / "manifest.json").unlink()  # as if the run had been killed before it finished
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------- OS failures: one line, exit 2
def _fail_with(code):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))
    return fail


def test_read_only_run_directory_fails_before_the_evaluation(trained, monkeypatch, capsys):
    import errno
    import tempfile

    import softrec.evaluation.evaluate as evaluation

    called = []
    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: called.append(1))
    monkeypatch.setattr(tempfile, "mkstemp", _fail_with(errno.EROFS))  # every atomic write's temporary file
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), *EVAL]) == 2
    assert "read-only file system" in _error_line(capsys)
    assert not called


def test_disk_full_during_training_is_one_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    import errno

    monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    assert "no space left on the device" in _error_line(capsys)


def test_disk_full_during_prepare_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    real = Path.write_text

    def full(self, *a, **k):
        if self.name.endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "P"
    assert main(["data", "prepare", "--dataset", "demo", "--out", str(out), "--train-size", "16",
                 "--valid-size", "4", "--test-size", "4"]) == 2
    assert "no space left on the device" in _error_line(capsys)
    assert not out.exists() and not any(tmp_path.iterdir())  # no temporary copy, no lock file


def test_refused_commands_leave_no_debris(tiny_dataset, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["distill", "--run", str(missing), "--data", str(tiny_dataset.path), "--no-preflight"]) == 2
    assert "not a softrec run directory" in _error_line(capsys)
    assert main(["evaluate", "--run", str(missing), *EVAL]) == 2
    _error_line(capsys)
    assert not missing.exists()


def test_run_and_report_commands_refuse_foreign_directories(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert main(["run", "--out", str(out), "--model", "tiny", "--no-preflight"]) == 2
    assert "softrec did not create it" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (out / "sft").mkdir()
    (out / "sft" / "run.json").write_text("{}")
    (out / "report").mkdir()
    (out / "report" / "notes.md").write_text("mine")
    assert main(["report", str(out)]) == 2
    assert "holds files softrec did not write (notes.md)" in _error_line(capsys)
    assert (out / "report" / "notes.md").read_text() == "mine"


def test_invalid_dataset_json_is_one_line(tiny_dataset, tmp_path, capsys):
    (tiny_dataset.path / "dataset.json").write_text("[1, 2")
    assert main(["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    assert "dataset.json: not valid JSON" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_retraining_removes_chunks_of_the_previous_weights(trained, tiny_dataset):
    stale = trained / "eval" / "test-l2.parts" / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "000000000.jsonl").write_text("{}\n")
    _retrain(tiny_dataset, trained)
    assert not (trained / "eval" / "test-l2.parts").exists()


def test_a_second_prepare_of_the_same_directory_is_refused(tmp_path):
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset
    from softrec.runs import dir_lock

    config = DataConfig(dataset="demo", train_size=16, valid_size=4, test_size=4)
    with dir_lock(tmp_path / ".P.lock", "held by the first prepare"):
        with pytest.raises(UserError, match="another softrec process is preparing this dataset"):
            prepare_dataset(config, tmp_path / "P")
    prepare_dataset(config, tmp_path / "P")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_prepare_removes_what_a_killed_prepare_left_but_not_look_alikes(tmp_path):
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    config = DataConfig(dataset="demo", train_size=16, valid_size=4, test_size=4)
    for name in (".P.ab12cd34.tmp", ".P.ef56gh78.old"):  # what mkdtemp-named copies look like
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text("half\n")
    (tmp_path / ".P.old").mkdir()  # the user's, not of that form
    prepare_dataset(config, tmp_path / "P")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".P.old", "P"]
