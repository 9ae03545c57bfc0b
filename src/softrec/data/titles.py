"""Titles and item ids of the data protocol (steps 1 and 3 in `protocol`): normalised titles, ids in
a stable order, and duplicate titles told apart without merging ids."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from softrec.data.dataset import Item

_SPACE = re.compile(r"\s+")


def normalise_title(text: Any) -> str:
    """HTML-unescape (repeatedly, for double-escaped text) and collapse whitespace; '' if no title."""
    if not isinstance(text, str):
        return ""
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return _SPACE.sub(" ", text).strip()


def sort_ids(keys: Iterable[str]) -> list[str]:
    """Source ids in a stable order: numeric when all are integers, else as strings."""
    keys = list(keys)
    if all(k.lstrip("-").isdigit() for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _clean(value: Any) -> Any:
    """A catalogue extra as plain JSON, or None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, list | tuple | np.ndarray):
        value = [_clean(v) for v in value]
    return value if value not in ("", []) else None


def titled_catalogue(catalogue: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalised titles; first row wins for a repeated id; items with no title removed."""
    counts = {"catalogue_rows": len(catalogue)}
    frame = catalogue.drop_duplicates("item", keep="first").copy()
    counts["duplicate_item_ids"] = len(catalogue) - len(frame)
    frame["title"] = [normalise_title(t) for t in frame["title"]]
    has_title = frame["title"] != ""
    counts["items_without_title"] = int((~has_title).sum())
    return frame[has_title], counts


def _year(extra: dict[str, Any]) -> str | None:
    for key in ("year", "release_year"):
        if extra.get(key) not in (None, ""):
            return str(extra[key])
    date = str(extra.get("release_date") or "")
    return date[-4:] if date[-4:].isdigit() else None


def build_items(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[list[Item], list[dict[str, Any]]]:
    """Items with ids 0..n-1 in `keys` order; duplicate titles made unique (module docstring)."""
    rows = frame.set_index("item").loc[list(keys)]
    extras_cols = [c for c in rows.columns if c != "title"]
    items: list[Item] = []
    taken: set[str] = set()
    first_with: dict[str, int] = {}
    duplicates = []
    for item_id, (key, record) in enumerate(zip(keys, rows.to_dict("records"), strict=True)):
        extra = {"source_id": key}
        for column in extras_cols:
            value = _clean(record[column])
            if value is not None:
                extra[column] = value
        title = record["title"]
        if title in first_with:
            original, year = title, _year(extra)
            distinct = year is not None and year != _year(items[first_with[original]].extra)
            title = f"{original} ({year})" if distinct and f"{original} ({year})" not in taken else None
            number = 2
            while title is None or title in taken:
                title, number = f"{original} ({number})", number + 1
            extra.update(duplicate_of=first_with[original], original_title=original)
            duplicates.append({"item_id": item_id, "duplicate_of": first_with[original], "title": title})
        else:
            first_with[title] = item_id
        taken.add(title)
        items.append(Item(item_id, title, extra))
    return items, duplicates

