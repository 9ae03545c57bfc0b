"""What this machine computes natively: the one place that decides bf16 for training and decoding."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AMX or AVX512-BF16); without them bf16 is emulated, slower.
    SOFTREC_CPU_BF16=0 (or 1) overrides the detection: the test suite sets 0 so that its fp32 golden
    values and exact-parity checks hold on every CPU kind, subprocesses included."""
    override = os.environ.get("SOFTREC_CPU_BF16", "")
    if override in ("0", "1"):
        return override == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    return any(f" {flag}" in flags for flag in _BF16_CPU_FLAGS)


def use_bf16(setting: str, device_type: str = "cpu") -> bool:
    """A bf16 setting: "on", "off", or "auto" (on where the hardware computes bf16 natively)."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_has_bf16()


def peak_memory_gib() -> dict[str, float]:
    """This process's peak memory so far, in GiB: resident host memory (`rss`, the kernel's high-water
    mark) and, on CUDA, the caching allocator's peak (`cuda`). Recorded per epoch so that a run shows
    what it really needed next to the preflight's estimate, and a leak shows as a climb. Linux starts a
    child's `rss` mark at its parent's, so a step launched from a large process reads at least that."""
    import resource

    peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # Linux: KiB
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return peak
