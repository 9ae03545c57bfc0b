"""`softrec bench quality --pack FILE`: a resumable folder carried to another machine in one tar.gz."""

from __future__ import annotations

import json
import tarfile

from softrec.cli import main as cli_main

TOKENIZER = b"the same tokenizer in every checkpoint " * 1000


def _write(path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _bench_folder(root):
    out = root / "out"
    _write(out / "steps.json", json.dumps({"softrec data prepare": {"kind": "prepare"}}).encode())
    _write(out / "data" / "books" / "train.jsonl", b'{"history": [1, 2]}\n')
    run = out / "books" / "sft"
    for step in (3, 12, 9):
        _write(run / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors", f"weights {step}".encode())
        _write(run / "checkpoints" / f"checkpoint-{step}" / "tokenizer.json", TOKENIZER)
    _write(run / "epochs" / "epoch-1" / "tokenizer.json", TOKENIZER)
    _write(run / "epochs" / "epoch-1" / "adapter_model.safetensors", b"epoch 1")
    return out


def test_the_pack_keeps_each_runs_newest_checkpoint_and_stores_identical_files_once(tmp_path, capsys):
    out = _bench_folder(tmp_path)
    target = tmp_path / "state.tar.gz"
    assert cli_main(["bench", "quality", "--suite", "cpu-medium", "--out", str(out), "--pack", str(target)]) == 0
    assert "2 older checkpoints left out" in capsys.readouterr().out
    with tarfile.open(target) as tar:
        members = {m.name: m for m in tar.getmembers()}
        restored = tmp_path / "restored"
        tar.extractall(restored, filter="data")
    assert not any("checkpoint-3" in name or "checkpoint-9" in name for name in members)
    tokenizers = [name for name in members if name.endswith("tokenizer.json")]
    assert len(tokenizers) == 2 and sum(members[name].islnk() for name in tokenizers) == 1
    for relative in ("steps.json", "data/books/train.jsonl", "books/sft/checkpoints/checkpoint-12/adapter_model.safetensors",
                     "books/sft/checkpoints/checkpoint-12/tokenizer.json", "books/sft/epochs/epoch-1/tokenizer.json",
                     "books/sft/epochs/epoch-1/adapter_model.safetensors"):
        assert (restored / relative).read_bytes() == (out / relative).read_bytes(), relative
    assert not list(tmp_path.glob("*.partial"))


def test_packing_a_folder_that_is_no_bench_run_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["bench", "quality", "--out", str(tmp_path), "--pack", str(tmp_path / "x.tar.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "steps.json" in err and "\n" not in err
    assert not (tmp_path / "x.tar.gz").exists()


def test_background_lowers_nice_and_the_autogroup_and_survives_without_one(tmp_path, monkeypatch):
    import os

    from softrec.bench.quality.execution import run_in_background

    calls = []
    monkeypatch.setattr(os, "nice", lambda increment: calls.append(increment) or 5)  # now at nice 5
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    assert run_in_background(group) == ["nice 19", f"{group} nice 19"]
    assert calls == [0, 14] and group.read_text() == "19"
    assert run_in_background(tmp_path / "absent" / "autogroup") == ["nice 19"]  # no autogroup: nice alone
