"""Windows of the data protocol (steps 2, 4-6 in `protocol`): k-core filtering, per-user sliding
windows, the time and leave-one-out splits and the seeded samples."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from softrec.config import DataConfig
from softrec.data.dataset import SPLITS


class Window(NamedTuple):
    """One (history, target) sample before sampling; `row` orders windows that tie in time."""

    user: str
    history: tuple[int, ...]
    target: int
    timestamp: float | None
    row: int
    position: int = 0  # index among the user's windows in its pool (0 = earliest)
    of: int = 1  # how many windows the user has in that pool



def k_core(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Iteratively drop users and items with fewer than `k` interactions until none is left."""
    rounds = 0
    if k > 1:
        while True:
            users = inter["user"].map(inter["user"].value_counts())
            items = inter["item"].map(inter["item"].value_counts())
            keep = (users >= k) & (items >= k)
            if bool(keep.all()):
                break
            inter = inter[keep.to_numpy()]
            rounds += 1
    return inter, {"k": k, "rounds": rounds}


def user_windows(length: int, history_len: int, stride: int, min_history: int) -> list[tuple[int, int]]:
    """(start, target) positions in a sequence of `length`: history = seq[start:target]."""
    if length <= history_len + 1:
        return [(0, length - 1)] if length - 1 >= min_history else []
    targets = range(length - 1, history_len - 1, -stride)
    return [(t - history_len, t) for t in reversed(targets)]


def windows_from_log(inter: pd.DataFrame, ids: dict[str, int], config: DataConfig) -> tuple[list[Window], int]:
    """Chronological windows per user; also returns how many users were too short for one."""
    codes, names = pd.factorize(inter["user"], sort=True)
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), codes))
    users = codes[order]
    items = np.array([ids[i] for i in inter["item"].to_numpy()[order]], dtype=np.int64)
    times = inter["timestamp"].to_numpy()[order]
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    out, too_short = [], 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        spans = user_windows(int(hi - lo), config.history_len, config.stride, config.min_history)
        too_short += not spans
        seq, user = items[lo:hi].tolist(), str(names[users[lo]])
        for position, (start, target) in enumerate(spans):
            out.append(Window(user, tuple(seq[start:target]), seq[target],
                              float(times[lo + target]), len(out), position, len(spans)))
    return out, too_short


def with_positions(windows: list[Window]) -> list[Window]:
    """Fill each window's position among its user's windows (in time order) in this pool."""
    per_user: dict[str, list[int]] = {}
    for index in sorted(range(len(windows)), key=lambda i: time_key(windows[i])):
        per_user.setdefault(windows[index].user, []).append(index)
    out = list(windows)
    for indices in per_user.values():
        for position, index in enumerate(indices):
            out[index] = out[index]._replace(position=position, of=len(indices))
    return out


def time_key(window: Window) -> tuple[float, float]:
    """Chronological order; without timestamps, a user's later windows count as later."""
    if window.timestamp is None:
        return (float(window.position - window.of), float(window.row))
    return (window.timestamp, float(window.row))


# ------------------------------------------------------------------ splits and samples
def split_time(windows: list[Window], ratios: Sequence[float]) -> dict[str, list[Window]]:
    ordered = sorted(windows, key=time_key)
    n = len(ordered)
    cut1, cut2 = int(n * ratios[0]), int(n * (ratios[0] + ratios[1]))
    return {"train": ordered[:cut1], "valid": ordered[cut1:cut2], "test": ordered[cut2:]}


def split_loo(windows: list[Window]) -> dict[str, list[Window]]:
    """Per user: last window -> test, the one before -> valid, the rest -> train."""
    out: dict[str, list[Window]] = {s: [] for s in SPLITS}
    for w in with_positions(windows):
        from_end = w.of - 1 - w.position
        out["test" if from_end == 0 else "valid" if from_end == 1 else "train"].append(w)
    return {s: sorted(ws, key=time_key) for s, ws in out.items()}


def carve_latest(windows: list[Window], share: float) -> tuple[list[Window], list[Window]]:
    """(earlier, latest) with `share` of the windows in the latest part."""
    ordered = sorted(with_positions(windows), key=time_key)
    cut = len(ordered) - int(round(len(ordered) * share))
    return ordered[:cut], ordered[cut:]


def sample_indices(n: int, size: int | None, seed: int) -> list[int]:
    """A seeded sample of range(n), kept in order; everything when size is None or >= n."""
    if size is None or size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), size))

