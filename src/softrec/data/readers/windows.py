"""Sliding-window CSV + id->title JSON: the SOFT / BIGRec / MSL format (e.g. `amazon-books/`).

- `train.csv`, optional `valid.csv`, `test.csv`: `user_id,item_ids,timestamp`; `item_ids` is a list
  of integer ids in time order whose last id is the target; `timestamp` is the target's time.
- `id2name4Rec.json` (or `id2name.json`): `{"<id>": "<title>", ...}`.

Every id in a window must be in the JSON (the windows were built from it).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from softrec.data.readers.base import SourceData, check_json_ids, domain_for
from softrec.data.readers.files import find_file, read_text
from softrec.data.readers.jsontext import json_line, load_json
from softrec.data.readers.tables import check_known, id_lists, numeric, read_table, require_values
from softrec.errors import DataFormatError, UserError

TITLE_FILES = ("id2name4Rec.json", "id2name.json")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}


def read_id_titles(path: Path) -> pd.DataFrame:
    """`{"<int id>": "<title>"}` -> catalogue rows (item, title) in file order."""
    text = read_text(path)
    mapping = load_json(text, path, expected='{"<id>": "<title>", ...}')
    if not isinstance(mapping, dict):
        raise DataFormatError(str(path), "expected a JSON object {\"<id>\": \"<title>\", ...}")

    def where(key: str) -> str:
        line = json_line(text, "key", key)
        return f"{path}:{line}" if line is not None else f"{path}: key {key!r}"

    items, titles = [], []
    for key, title in mapping.items():
        if not key.strip().lstrip("-").isdigit():
            raise DataFormatError(where(key), f"key {key!r}: expected an integer item id")
        if not isinstance(title, str):
            raise DataFormatError(where(key), f"key {key!r}: expected a title string, got {title!r:.80}")
        items.append(str(int(key)))
        titles.append(title)
    check_json_ids(path, text, list(mapping), items, "id")
    return pd.DataFrame({"item": items, "title": titles})


def read_window_csv(path: Path, known: set[str], catalogue_name: str) -> pd.DataFrame:
    table = read_table(path, ["user_id", "item_ids", "timestamp"])
    require_values(path, table, ["user_id"])
    lists = id_lists(path, table, "item_ids", min_len=2)
    check_known(path, table["_line"], lists, known, "item_ids", catalogue_name)
    return pd.DataFrame({
        "user": table["user_id"].str.strip(),
        "items": lists,
        "timestamp": numeric(path, table, "timestamp"),
    })


def read(path: Path, name: str) -> SourceData:
    titles_path = find_file(path, *TITLE_FILES)
    if titles_path is None:
        raise UserError(f"{path}: no {TITLE_FILES[0]} (id -> title map) in the sliding-window dataset")
    catalogue = read_id_titles(titles_path)
    known = set(catalogue["item"])
    windows = {}
    for split, filename in SPLIT_FILES.items():
        file = find_file(path, filename)
        if file is None:
            if split == "valid":
                continue
            raise UserError(f"{path / filename}: file not found; the sliding-window format needs {filename}")
        windows[split] = read_window_csv(file, known, titles_path.name)
    return SourceData(
        name=name, format="windows", domain=domain_for(name, "windows"), catalogue=catalogue,
        windows=windows,
    )
