"""benchmarks/device_quality.py: parts, checksums, the device calls, and one rehearsal of them on the CPU."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared" / "data" / "amazon-books"


def _script():
    sys.path.append(str(ROOT / "benchmarks"))  # device_quality imports device_kit beside it
    spec = importlib.util.spec_from_file_location("device_quality", ROOT / "benchmarks" / "device_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dq = _script()


def _split(tmp_path, data: bytes, part_bytes: int, blocks: int = 7):
    stream = (data[i:i + blocks] for i in range(0, len(data), blocks))  # blocks that straddle the parts
    return dq.split_stream(stream, tmp_path, "w.bin", part_bytes)


def test_parts_reassemble_to_the_same_bytes(tmp_path):
    data = bytes(range(256)) * 3 + b"tail"
    parts = _split(tmp_path, data, 100)
    assert [p["bytes"] for p in parts] == [100] * 7 + [72]
    assert [p["folder"] for p in parts][:2] == ["part-01", "part-02"]
    record = json.loads((tmp_path / "part-08" / "part.json").read_text())
    assert record == {**parts[-1], "count": 8} and record["file"] == "w.bin.08"
    whole = dq.reassemble(tmp_path, parts, tmp_path / "out" / "w.bin", hashlib.sha256(data).hexdigest())
    assert whole.read_bytes() == data


def test_a_changed_part_is_caught_on_arrival_and_at_reassembly(tmp_path):
    data = os.urandom(250)
    parts = _split(tmp_path, data, 100)
    path = tmp_path / "part-02" / "w.bin.02"
    path.write_bytes(b"x" + path.read_bytes()[1:])  # same size, other bytes
    with pytest.raises(ValueError, match="part-02/w.bin.02: missing or not the bytes that were sent"):
        dq.check_part(tmp_path / "part-02")
    with pytest.raises(ValueError, match="part-02"):
        dq.reassemble(tmp_path, parts, tmp_path / "w.bin", hashlib.sha256(data).hexdigest())


def test_missing_parts_and_a_wrong_whole_are_one_line_errors(tmp_path):
    data = os.urandom(250)
    parts = _split(tmp_path, data, 100)
    (tmp_path / "part-03" / "part.json").unlink()
    with pytest.raises(ValueError, match=r"parts not on this machine: part-03 \(the machine went back"):
        dq.reassemble(tmp_path, parts, tmp_path / "w.bin", hashlib.sha256(data).hexdigest())
    parts = _split(tmp_path, data, 100)
    with pytest.raises(ValueError, match="reassembled sha256"):
        dq.reassemble(tmp_path, parts, tmp_path / "w.bin", "0" * 64)


def test_check_command_says_what_the_machine_holds(tmp_path):
    _split(tmp_path, os.urandom(250), 100)
    script = [sys.executable, str(ROOT / "benchmarks" / "device_quality.py"), "check"]
    ok = subprocess.run([*script, str(tmp_path / "part-02")], capture_output=True, text=True)
    assert ok.returncode == 0 and "part-02 ok (0.0 MiB" in ok.stdout
    assert ok.stdout.rstrip().endswith("on this machine: part-01, part-02, part-03 of 3")
    (tmp_path / "part-01" / "w.bin.01").write_bytes(b"short")
    bad = subprocess.run([*script, str(tmp_path / "part-01")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("device_quality: ") and len(bad.stderr.splitlines()) == 1


def test_calls_fit_the_device_limits_and_the_last_part_rides_with_the_run(tmp_path):
    kit, wheels = tmp_path / ".devquality", tmp_path / ".whl"
    sizes = [60, 60, 60, 60, 1.4]
    parts = []
    for index, mib in enumerate(sizes, 1):
        folder = kit / f"part-{index:02d}"
        folder.mkdir(parents=True)
        with (folder / "w").open("wb") as fh:
            fh.truncate(int(mib * dq.MiB))  # sparse: the sizes without the bytes
        parts.append({"folder": folder.name, "bytes": int(mib * dq.MiB)})
    for folder, mib in ((wheels, 18.3), (kit / "kit", 3.3)):
        folder.mkdir(parents=True)
        with (folder / "f").open("wb") as fh:
            fh.truncate(int(mib * dq.MiB))
    calls = dq.plan_calls(tmp_path, kit, parts, int(1.9 * dq.MiB), wheels)
    assert [c["carry"] for c in calls] == [[f".devquality/part-0{i}"] for i in range(1, 5)] + [
        [".whl", ".devquality/kit", ".devquality/part-05"]]
    assert calls[0]["command"] == "python3 benchmarks/device_quality.py check .devquality/part-01"
    assert calls[-1]["command"] == "python3 benchmarks/device_quality.py run --kit .devquality --out $OUT"
    assert all(c["mib"] <= 64 and len(c["command"]) < 2000 for c in calls)
    assert calls[-1]["mib"] == pytest.approx(1.9 + 18.3 + 3.3 + 1.4, abs=0.01)


def test_a_bench_over_its_budget_is_stopped_with_its_children(tmp_path):
    """The device call must end inside its timeout with the finished rows: the bench's whole process
    group is stopped at the budget (a `softrec` step it started too)."""
    child = tmp_path / "child.pid"
    argv = [sys.executable, "-c", "import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(child)!r}, 'w').write(str(p.pid)); "
            "time.sleep(60)"]
    started = time.monotonic()
    status, stopped = dq.run_until(argv, dict(os.environ), 2, tmp_path / "log")
    assert (status, stopped) == (None, True) and time.monotonic() - started < 20
    stat = Path(f"/proc/{int(child.read_text())}/stat")
    for _ in range(50):  # gone, or a zombie waiting for init to reap it
        if not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the bench's child outlived the budget")
    assert dq.run_until([sys.executable, "-c", "print('hi')"], dict(os.environ), 30, tmp_path / "log") == (0, False)
    assert (tmp_path / "log").read_text() == "hi\n"


@pytest.mark.slow
@pytest.mark.skipif(not BOOKS.is_dir(), reason="needs ../shared/data/amazon-books")
def test_rehearsal_runs_the_printed_calls_end_to_end(tmp_path):
    """build --dry-run, then every printed call verbatim (python3 = this interpreter, $OUT set): the
    parts checked one call at a time, then `run` reassembles them and runs the bench (tiny model, smoke
    sizes, amazon-books from the kit's data). About 90 s on 2 busy cores."""
    started = time.monotonic()
    kit, out, bin_dir = tmp_path / "kit", tmp_path / "out", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out),
           "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}  # run's scratch folder lands in tmp_path
    built = subprocess.run(["python3", "benchmarks/device_quality.py", "build", "--dry-run", "--kit", str(kit),
                            "--data", str(BOOKS)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    calls = json.loads((kit / "calls.json").read_text())
    assert [c["command"].split()[2] for c in calls] == ["check", "check", "run"]  # 1 MiB parts, then the run
    assert calls[-1]["carry"][-2:] == [str(kit / "part-03"), str(kit / "part-04")]  # the last parts ride along
    for call in calls:
        done = subprocess.run(call["command"], shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{call['command']}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert " ok (1.0 MiB" in subprocess.run(calls[0]["command"], shell=True, cwd=ROOT, env=env,
                                             capture_output=True, text=True).stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["artefacts.tar.gz", "device.json", "results.json", "results.md", "results.png", "run.log"]
    device = json.loads((out / "device.json").read_text())
    assert list(device["phases"]) == ["verify", "install", "bench", "pack"] and device["suite"] == "smoke"
    assert device["phases"]["bench"] == {"seconds": device["phases"]["bench"]["seconds"], "status": 0,
                                         "stopped_by_budget": False}
    rows = json.loads((out / "results.json").read_text())["results"]["amazon-books"]["methods"]
    assert set(rows) == {"sft", "soft"}
    import tarfile

    with tarfile.open(out / "artefacts.tar.gz") as archive:
        names = archive.getnames()
    assert "save/predictions/amazon-books-soft.jsonl.gz" in names and "bench/steps.json" in names
    assert "bench/amazon-books/sft/distilled.jsonl" in names and "bench/amazon-books/soft/history.json" in names
    assert time.monotonic() - started < 180
