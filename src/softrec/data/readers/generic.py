"""A generic pair of CSV files for users' own logs.

- `interactions.csv`: columns `user` (or `user_id`), `item` (or `item_id`), `timestamp` (unix
  seconds, or ISO-8601 dates); extra columns are ignored;
- `items.csv`: columns `item` (or `item_id`) and `title` (or `name`); other columns are kept as
  catalogue extras (author, year, ...).

Other file names work too when their headers say which is which. Every listed item needs a
non-empty title and a unique id: this is the user's own catalogue, so gaps are reported, not
silently dropped. Interactions with items the catalogue does not list are dropped (and counted).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd

from softrec.data.readers.base import SourceData, check_spelling, check_unique_ids, domain_for
from softrec.data.readers.tables import fail_at, header_fields, numeric, read_table, require_values
from softrec.errors import UserError

ALIASES = {
    "user_id": "user", "item_id": "item", "time": "timestamp", "name": "title",
}
INTERACTIONS, ITEMS = "interactions.csv", "items.csv"


def _canonical(name: str) -> str:
    name = name.strip()
    return ALIASES.get(name.lower(), name.lower() if name.lower() in ALIASES.values() else name)


def sep(path: Path) -> str:
    return "\t" if ".tsv" in path.name else ","


def _columns(path: Path) -> set[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            first = fh.readline(1 << 16).rstrip("\r\n")  # bounded: a header, not a whole file
    except (OSError, EOFError):
        return set()
    return {_canonical(n) for n in header_fields(first, sep(path))}


def find_pair(path: Path) -> tuple[Path, Path] | None:
    """(interactions file, items file): the conventional names, else the CSVs whose headers fit."""
    if (path / INTERACTIONS).exists() and (path / ITEMS).exists():  # a FIFO is refused when read
        return path / INTERACTIONS, path / ITEMS
    candidates = sorted(p for p in path.iterdir() if p.is_file() and (".csv" in p.name or ".tsv" in p.name))
    logs = [p for p in candidates if {"user", "item", "timestamp"} <= _columns(p)]
    items = [p for p in candidates if {"item", "title"} <= _columns(p) and "user" not in _columns(p)]
    if len(logs) == 1 and len(items) == 1:
        return logs[0], items[0]
    return None


def read(path: Path, name: str) -> SourceData:
    pair = find_pair(path)
    if pair is None:
        raise UserError(
            f"{path}: expected {INTERACTIONS} (user,item,timestamp) and {ITEMS} (item,title)"
        )
    log_path, items_path = pair
    log = read_table(log_path, ["user", "item", "timestamp"], sep=sep(log_path), rename=_canonical)
    require_values(log_path, log, ["user", "item"])
    interactions = pd.DataFrame({
        "user": log["user"].str.strip(), "item": log["item"].str.strip(),
        "timestamp": numeric(log_path, log, "timestamp", allow_dates=True),
    })
    items = read_table(items_path, ["item", "title"], sep=sep(items_path), rename=_canonical)
    require_values(items_path, items, ["item"])
    fail_at(items_path, items, items["title"].str.strip().eq(""), "title", "a non-empty title")
    ids = items["item"].str.strip()
    check_unique_ids(items_path, list(ids), list(items["_line"]))
    check_spelling(log_path, log, "item", ids, items_path)
    extras = [c for c in items.columns if c not in ("item", "title", "_line")]
    catalogue = pd.concat([pd.DataFrame({"item": ids, "title": items["title"]}), items[extras]], axis=1)
    return SourceData(
        name=name, format="csv", domain=domain_for(name, "csv"), catalogue=catalogue,
        interactions=interactions,
    )
