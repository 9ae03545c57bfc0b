"""The data protocol (the reference's origin_data/amazon_process.py and process.py): a source -> one prepared-dataset directory.

Steps, each a setting in `DataConfig` (reference defaults in brackets):

0. exact-duplicate interaction rows are dropped (full logs; reference `drop_duplicates`);
1. titles: HTML-unescaped and whitespace-normalised; items without a title are dropped with their
   interactions (counted in stats.json);
2. iterative k-core on users and items [10] (full logs only: pre-windowed sources were filtered by
   their publisher, so their windows are kept as published);
3. stable item ids: the surviving items sorted by their source id (numerically when every id is an
   integer), never by set or hash order;
4. per user, chronological sliding windows of `history_len` [10] items + the next one as target,
   every `stride` [1] targets counted back from the user's last interaction; a user with
   <= history_len + 1 interactions gives one window (shorter history);
5. splits: `time` [reference] sorts windows by the target's timestamp and cuts them by `ratios`
   [0.8/0.1/0.1]; `loo` keeps each user's last window for test and the one before for validation.
   Pre-windowed sources keep their published split under `time`; when they have no validation
   file, the latest training windows are carved off for it (share ratios[1] / (ratios[0] +
   ratios[1])); `loo` re-splits all their windows per user;
6. seeded samples of train/valid/test [4096/512/1000, seed 42]; `train_full` keeps every training
   window for the classic recommenders.

Duplicate titles: generation needs every title to name one item, so when several items share a
title the first (lowest id) keeps it and each other one gets a suffix, " (YEAR)" when its year tells
it apart, else " (2)", " (3)", ...; the row records `duplicate_of` (the first item's id) and
`original_title`, and stats.json lists them. Ids are never merged.

`prepare_dataset` writes atomically and reuses an existing output built from the same input
checksums and settings; a rerun produces byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from softrec.config import DataConfig
from softrec.data.dataset import SPLITS, Domain, Item, PreparedDataset, Sample, write_prepared
from softrec.data.readers.base import SourceData
from softrec.data.titles import build_items, sort_ids, titled_catalogue
from softrec.data.windowing import (
    Window,
    carve_latest,
    k_core,
    sample_indices,
    split_loo,
    split_time,
    time_key,
    user_windows,
    windows_from_log,
    with_positions,
)
from softrec.errors import UserError

PROTOCOL_VERSION = 5  # 5: exact-duplicate interaction rows dropped (reference). Bump when the same inputs and settings would give different files
Log = Callable[[str], None]
# The steps' parts: titles and item ids (steps 1, 3) in `titles`; k-core, windows, splits and
# samples (steps 2, 4-6) in `windowing`; here the statistics, the two source kinds and the whole.


# ------------------------------------------------------------------ stats helpers
def length_summary(lengths: Sequence[int]) -> dict[str, Any]:
    if not lengths:
        return {"min": 0, "max": 0, "mean": 0.0, "counts": []}
    counts = Counter(lengths)
    return {
        "min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 4),
        "counts": [[length, counts[length]] for length in sorted(counts)],
    }


def sequence_summary(per_user: pd.Series) -> dict[str, Any]:
    if per_user.empty:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0}
    return {"min": int(per_user.min()), "max": int(per_user.max()),
            "mean": round(float(per_user.mean()), 4), "median": float(per_user.median())}


def reconstructed_interactions(windows: Iterable[tuple[str, Sequence[Any], Any]]) -> int:
    """Interactions implied by stride-1 windows: per user, overlapping windows are merged."""
    sequences: dict[str, list[Any]] = {}
    for user, items, _ in windows:
        seq = sequences.setdefault(user, [])
        overlap = next((k for k in range(min(len(seq), len(items)), 0, -1) if seq[-k:] == list(items[:k])), 0)
        seq.extend(items[overlap:])
    return sum(len(s) for s in sequences.values())


def _stamp(value: Any) -> float | None:
    """A window's timestamp, None when the source has none (NaN)."""
    return None if value is None or value != value else float(value)


# ------------------------------------------------------------------ the two source kinds
@dataclass
class _Prepared:
    items: list[Item]
    pools: dict[str, list[Window]]
    stats: dict[str, Any]


def _from_log(source: SourceData, config: DataConfig) -> _Prepared:
    inter = source.interactions
    assert inter is not None
    per_user = inter.groupby("user", observed=True).size()
    raw_histories = [target - start for length in per_user
                     for start, target in user_windows(int(length), config.history_len, config.stride, config.min_history)]
    before = {
        "users": int(inter["user"].nunique()), "items": int(inter["item"].nunique()),
        "interactions": len(inter), "sequence_length": sequence_summary(per_user),
        # what windowing the unfiltered log would give, for comparison with the kept windows
        "windows": len(raw_histories), "history_length": length_summary(raw_histories),
    }
    # exact-duplicate rows (same user, item, time, rating, ...) count once: reference
    # origin_data/amazon_process.py line 13 (`df.drop_duplicates()`)
    n_rows = len(inter)
    inter = inter.drop_duplicates()
    catalogue, cat_counts = titled_catalogue(source.catalogue)
    titled = inter["item"].isin(set(catalogue["item"]))
    dropped = {
        "duplicate_interaction_rows": n_rows - len(inter),
        "interactions_without_title": int((~titled).sum()),
        "items_without_title": int(inter.loc[~titled, "item"].nunique()),
    }
    inter = inter[titled.to_numpy()]
    inter = inter.assign(user=inter["user"].astype(str), item=inter["item"].astype(str))
    n_before_core = len(inter)
    users_before, items_before = inter["user"].nunique(), inter["item"].nunique()
    inter, core = k_core(inter, config.k_core)
    dropped.update({
        "interactions_k_core": n_before_core - len(inter),
        "users_k_core": int(users_before - inter["user"].nunique()),
        "items_k_core": int(items_before - inter["item"].nunique()),
    })
    if inter.empty:
        raise UserError(
            f"dataset '{source.name}': no interactions left after dropping untitled items and the "
            f"{config.k_core}-core filter; lower --k-core"
        )
    keys = sort_ids(inter["item"].unique())
    items, duplicates = build_items(catalogue, keys)
    ids = {key: i for i, key in enumerate(keys)}
    windows, too_short = windows_from_log(inter, ids, config)
    dropped["users_too_short"] = too_short
    if config.split == "time":
        pools = split_time(windows, config.ratios)
    else:
        pools = split_loo(windows)
    stats = {
        "users": int(inter["user"].nunique()), "items": len(items), "interactions": len(inter),
        "before_filtering": before, "dropped": dropped, "catalogue": cat_counts, "k_core": core,
        "sequence_length": sequence_summary(inter.groupby("user").size()),
        "duplicate_titles": duplicates,
    }
    return _Prepared(items, pools, stats)


def _from_windows(source: SourceData, config: DataConfig) -> _Prepared:
    assert source.windows is not None
    raw = source.windows
    catalogue, cat_counts = titled_catalogue(source.catalogue)
    keys = sort_ids(catalogue["item"])
    items, duplicates = build_items(catalogue, keys)
    ids = {key: i for i, key in enumerate(keys)}
    all_rows = [(u, its, t) for frame in raw.values()
                for u, its, t in zip(frame["user"], frame["items"], frame["timestamp"], strict=True)]
    before = {
        "users": len({u for u, _, _ in all_rows}), "items": int(source.catalogue["item"].nunique()),
        "interactions": reconstructed_interactions(sorted(all_rows, key=lambda r: _stamp(r[2]) or 0.0)),
        "windows": {split: len(frame) for split, frame in raw.items()},
        "history_length": {split: length_summary([len(x) - 1 for x in frame["items"]]) for split, frame in raw.items()},
    }
    dropped = Counter({"windows_without_title_target": 0, "history_items_without_title": 0, "windows_short_history": 0})
    pools: dict[str, list[Window]] = {}
    untruncated: dict[int, list[int]] = {}  # row -> the window's titled items, before history_len
    row = 0
    for split, frame in raw.items():
        pool = []
        for user, keys_, stamp in zip(frame["user"], frame["items"], frame["timestamp"], strict=True):
            row += 1
            if keys_[-1] not in ids:
                dropped["windows_without_title_target"] += 1
                continue
            titled_items = [ids[k] for k in keys_ if k in ids]
            dropped["history_items_without_title"] += len(keys_) - len(titled_items)
            history = titled_items[:-1][-config.history_len:]
            if len(history) < config.min_history:
                dropped["windows_short_history"] += 1
                continue
            pool.append(Window(str(user), tuple(history), ids[keys_[-1]], _stamp(stamp), row))
            untruncated[row] = titled_items
        pools[split] = with_positions(pool)
    if config.split == "loo":
        # forget per-pool positions: without timestamps, file order (train, valid, test) is time order
        pools = split_loo([w._replace(position=0, of=1) for pool in pools.values() for w in pool])
    elif "valid" not in pools:
        share = config.ratios[1] / max(config.ratios[0] + config.ratios[1], 1e-12)
        pools["train"], pools["valid"] = carve_latest(pools["train"], share)
    pools = {split: sorted(pools[split], key=time_key) for split in SPLITS}
    kept = [w for pool in pools.values() for w in pool]
    stats = {
        "users": len({w.user for w in kept}), "items": len(items),
        # file order (rows) within equal times: a user's windows must be merged in sequence order
        "interactions": reconstructed_interactions(
            (w.user, untruncated[w.row], w.timestamp)
            for w in sorted(kept, key=lambda w: (w.timestamp or 0.0, w.row))),
        "before_filtering": before, "dropped": dict(dropped), "catalogue": cat_counts,
        "k_core": {"k": config.k_core, "applied": False,
                   "note": "pre-windowed source: windows kept as published (filtered by the publisher)"},
        "duplicate_titles": duplicates,
    }
    return _Prepared(items, pools, stats)


# ------------------------------------------------------------------ putting it together
def settings_for(config: DataConfig, name: str, fmt: str) -> dict[str, Any]:
    """The settings a prepared dataset depends on (not where the input lives)."""
    settings = config.model_dump(mode="json")
    settings.pop("dataset")
    settings.update(name=name, format=fmt, protocol=PROTOCOL_VERSION)
    return settings


def reusable(out: Path, settings: dict[str, Any], sources: dict[str, str]) -> PreparedDataset | None:
    """The existing dataset at `out` when it was built from the same inputs/settings and is intact."""
    if not (out / "dataset.json").is_file():
        return None
    try:
        dataset = PreparedDataset(out)
    except (UserError, json.JSONDecodeError):
        return None
    meta = dataset.meta
    if meta.get("settings") != settings or meta.get("sources") != sources:
        return None
    return dataset if dataset.intact() else None


def check_out(out: Path) -> None:
    """Refuse, before any work, to replace a directory that holds something other than a prepared
    dataset softrec wrote (a run, files the user added), or one that cannot be written."""
    from softrec.data.dataset import FILES
    from softrec.runs import check_replaceable, os_error

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise UserError(f"{out}: exists, is not empty and is not a prepared dataset; choose another --out")
    check_replaceable(out, "dataset", legacy=FILES)
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{out}: {parent} is a file, not a directory; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise os_error(out, PermissionError(13, "permission denied"))


def build(source: SourceData, config: DataConfig, out: Path, settings: dict[str, Any]) -> PreparedDataset:
    """Filter, window, split, sample and write `source` (the protocol of the module docstring)."""
    if config.min_history > config.history_len:
        raise UserError(f"data.min_history ({config.min_history}) must be <= data.history_len ({config.history_len})")
    prepared = _from_log(source, config) if source.interactions is not None else _from_windows(source, config)
    pools = prepared.pools
    if not pools["train"] or not pools["test"]:
        raise UserError(
            f"dataset '{source.name}': the {config.split} split left {len(pools['train'])} train and "
            f"{len(pools['test'])} test windows; it needs more users or interactions (or a lower --k-core)"
        )
    sizes = {"train": config.train_size, "valid": config.valid_size, "test": config.test_size}
    splits: dict[str, list[Sample]] = {}
    full = {split: [Sample(f"{split}-{i}", w.user, w.history, w.target, w.timestamp) for i, w in enumerate(pool)]
            for split, pool in pools.items()}
    for split in SPLITS:
        splits[split] = [full[split][i] for i in sample_indices(len(full[split]), sizes[split], config.seed)]
    splits["train_full"] = full["train"]
    stats = {
        **prepared.stats,
        "name": source.name, "format": source.format,
        **{split: len(splits[split]) for split in SPLITS},
        "windows": {split: len(pool) for split, pool in pools.items()},
        "history_length": {split: length_summary([len(w.history) for w in pool]) for split, pool in pools.items()},
        "notes": list(source.notes),
    }
    domain = Domain(*config.domain) if config.domain else source.domain
    return write_prepared(
        out, name=source.name, domain=domain, catalogue=prepared.items, splits=splits,
        stats=stats, settings=settings, sources=source.sources,
    )


def prepare_dataset(
    data_config: DataConfig, out: str | Path, *, force: bool = False, log: Log | None = None
) -> PreparedDataset:
    """Read `data_config.dataset`, apply the protocol and write a prepared dataset to `out`.

    Returns the existing dataset untouched when `out` was built from the same input checksums and
    settings (unless `force`). `log` receives short progress lines.
    """
    from softrec.data.readers import locate

    out = Path(out)
    say = log or (lambda _msg: None)
    located = locate(data_config.dataset, data_config.format)
    sources = located.checksums()
    settings = settings_for(data_config, located.name, located.format)
    if not force and (existing := reusable(out, settings, sources)) is not None:
        say(f"reused {out} (same inputs and settings)")
        return existing
    check_out(out)
    from softrec.runs import clean_leftovers, dir_lock

    # a lock beside the directory (inside it would be replaced with it): two prepares of one --out
    # would otherwise race to replace it; leftovers of a killed prepare go once the lock is held
    with dir_lock(out.parent / f".{out.name}.lock",
                  f"{out}: another softrec process is preparing this dataset; wait for it to finish",
                  remove=True):
        clean_leftovers(out.parent, out.name)
        say(f"reading {located.describe()} ({located.format})")
        source = located.read()
        source.sources = sources
        say("filtering, windowing and splitting")
        return build(source, data_config, out, settings)
