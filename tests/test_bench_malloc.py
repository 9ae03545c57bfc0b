"""benchmarks/bench_malloc_threshold.py: each variant's environment, and its one-line refusals."""

from __future__ import annotations

import ctypes.util
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_malloc_threshold.py"
spec = importlib.util.spec_from_file_location("bench_malloc_threshold", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_each_variant_sets_only_its_own_variable(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "stale.so")
    monkeypatch.setenv(bench.ENV, "1")
    default = bench.variant_env("0")
    assert bench.ENV not in default and "LD_PRELOAD" not in default and default["HF_HUB_OFFLINE"] == "1"
    threshold = bench.variant_env("128")
    assert threshold[bench.ENV] == "131072" and "LD_PRELOAD" not in threshold
    jemalloc = bench.variant_env("jemalloc")
    assert jemalloc["LD_PRELOAD"] == "libjemalloc.so.2" and bench.ENV not in jemalloc
    assert [bench.variant_name(v) for v in ("0", "128", "tcmalloc")] == [
        "glibc default", f"{bench.ENV}=131072 (128 KiB)", "LD_PRELOAD=libtcmalloc_minimal.so.4"]


def test_an_unknown_or_missing_allocator_is_one_line_and_exit_2_before_any_run(monkeypatch, capsys):
    unknown = subprocess.run([sys.executable, str(SCRIPT), "--data", "nowhere", "--allocators", "mimalloc"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr == (
        "bench_malloc_threshold: --allocators: unknown 'mimalloc' (known: jemalloc, tcmalloc)\n")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        bench.check_allocators(["jemalloc"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("bench_malloc_threshold: --allocators: libjemalloc.so.2 is not installed")
