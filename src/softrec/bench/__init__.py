"""Benchmark suites: `softrec bench quality` (the results table) and `softrec bench speed` (ratios)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display: benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(fig: Any, path: Path) -> Path:
    """The figure as a PNG at 120 dpi, written atomically (a reader never sees half a file); closes it."""
    import io

    from softrec.runs import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a benchmark ran on: CPU, cores, threads, RAM, GPUs, versions and the git commit."""
    import torch

    from softrec.runs import environment

    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        **environment(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": memory,
        "gpus": gpus,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a results.md."""
    gpus = ", ".join(info["gpus"]) or "no GPU"
    commit = info.get("git_commit") or "unknown commit"
    return (f"{info['cpu_model']}, {info['cpus']} CPUs ({info['torch_threads']} torch threads), "
            f"{info['memory_gib']} GiB RAM, {gpus}; torch {info['packages'].get('torch')}, "
            f"transformers {info['packages'].get('transformers')}; softrec at {commit}")
