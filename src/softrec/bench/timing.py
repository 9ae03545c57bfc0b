"""Timing for the benchmarks: a stopwatch that waits for the GPU, repeats with their median, ratios."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch


def sync() -> None:
    """Wait for queued GPU work, so a wall-clock interval covers what it claims to."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then t[0] is the block's seconds (GPU work included)."""
    out: list[float] = []
    sync()
    start = time.perf_counter()
    yield out
    sync()
    out.append(time.perf_counter() - start)


def series(values: Sequence[float]) -> dict[str, Any]:
    """Raw repeats and their median (what results.json stores for every measurement)."""
    values = [float(v) for v in values]
    return {"repeats": values, "median": statistics.median(values) if values else None}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None



@contextlib.contextmanager
def timing_calls(module: Any, name: str) -> Iterator[list[float]]:
    """Seconds of every call to `module.name` inside the block (the attribute is restored after)."""
    original = getattr(module, name)
    seconds: list[float] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stopwatch() as t:
            result = original(*args, **kwargs)
        seconds.append(t[0])
        return result

    setattr(module, name, wrapper)
    try:
        yield seconds
    finally:
        setattr(module, name, original)

