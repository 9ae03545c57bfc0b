"""D3 CSV (e.g. `amazon-industrial/`, from AkaliKong/MiniOneRec): windows with inline titles.

- `train.csv` (optional), `valid.csv`, `test.csv`: columns `user_id`, `history_item_id` (a list of
  integer ids), `item_id` (the target), plus `history_item_title` / `item_title` and semantic-id
  columns (ignored). Rows are stride-1 windows without timestamps; the files are a global time split.
- `items.txt`: `sid<TAB>title<TAB>item_id` per line; `item.json`: `{"<item_id>": {"title", "brand",
  "categories", ...}}`. Titles come from items.txt, else item.json, else the inline title columns.

Without `train.csv` (the published case), `valid.csv` is the training pool (the protocol carves its
latest windows off for validation) and `test.csv` is the test split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from softrec.data.readers.base import SourceData, check_json_ids, check_unique_ids, domain_for
from softrec.data.readers.files import find_file, read_text
from softrec.data.readers.jsontext import json_line, load_json
from softrec.data.readers.tables import check_known, fail_at, id_lists, read_table, require_values
from softrec.errors import DataFormatError, UserError

REQUIRED = ["user_id", "history_item_id", "item_id"]
EXTRA_FIELDS = ("brand", "categories")


def read_items_txt(path: Path) -> pd.DataFrame:
    rows, raw, lines = [], [], []
    for number, line in enumerate(read_text(path).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[2].strip().isdigit():
            raise DataFormatError(
                f"{path}:{number}", "expected 3 tab-separated fields sid<TAB>title<TAB>integer item_id, "
                f"found {len(fields)} field(s)"
            )
        rows.append((str(int(fields[2])), fields[1]))
        raw.append(fields[2].strip())
        lines.append(number)
    check_unique_ids(path, [r[0] for r in rows], lines, raw, column="item_id")
    return pd.DataFrame(rows, columns=["item", "title"])


def read_item_json(path: Path) -> pd.DataFrame:
    text = read_text(path)
    data = load_json(text, path, expected='{"<item_id>": {"title": ...}}')
    if not isinstance(data, dict):
        raise DataFormatError(str(path), "expected a JSON object {\"<item_id>\": {\"title\": ...}}")

    def where(key: str) -> str:
        line = json_line(text, "key", key)
        return f"{path}:{line}" if line is not None else f"{path}: key {key!r}"

    rows = []
    for key, meta in data.items():
        if not isinstance(meta, dict) or not key.strip().isdigit():
            raise DataFormatError(where(key), f"key {key!r}: expected an integer id mapped to an object")
        title = meta.get("title")
        if title is not None and not isinstance(title, str):
            raise DataFormatError(where(key), f"key {key!r}: field 'title': expected a string, got {title!r:.80}")
        row = {"item": str(int(key)), "title": title or ""}
        row.update({f: str(meta.get(f) or "") for f in EXTRA_FIELDS})
        rows.append(row)
    items = [r["item"] for r in rows]
    check_json_ids(path, text, list(data), items, "item_id")
    return pd.DataFrame(rows, columns=["item", "title", *EXTRA_FIELDS])


def read_rows(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = read_table(path, REQUIRED)
    require_values(path, table, ["user_id", "item_id"])
    history = id_lists(path, table, "history_item_id", min_len=1)
    fail_at(path, table, ~table["item_id"].str.strip().str.isdigit(), "item_id", "an integer item id")
    target = [str(int(t)) for t in table["item_id"]]
    windows = pd.DataFrame({
        "user": table["user_id"].str.strip(),
        "items": [[*h, t] for h, t in zip(history, target, strict=True)],
        "timestamp": float("nan"),
        "_line": table["_line"],
    })
    return windows, table


def inline_titles(tables: list[tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """Titles from the CSVs themselves (targets only: history titles are lists of strings). One id
    with two different titles (also "01" and "1") is refused: which one is right?"""
    titles: dict[str, tuple[str, str]] = {}
    for path, table in tables:
        if "item_title" not in table.columns:
            continue
        for raw, title, line in zip(table["item_id"], table["item_title"], table["_line"], strict=True):
            item = str(int(raw.strip()))
            if item not in titles:
                titles[item] = (title, f"{path.name}:{line}")
            elif titles[item][0] != title:
                raise DataFormatError(
                    f"{path}:{line}", f"field 'item_title': item {raw.strip()} is titled {title!r} here but "
                    f"{titles[item][0]!r} at {titles[item][1]}; expected one title per item"
                )
    return pd.DataFrame({"item": list(titles), "title": [t for t, _ in titles.values()]}, columns=["item", "title"])


def read(path: Path, name: str) -> SourceData:
    has_train = find_file(path, "train.csv") is not None
    layout = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"} if has_train else {
        "train": "valid.csv", "test": "test.csv"}
    windows, tables, files = {}, [], {}
    for split, filename in layout.items():
        file = find_file(path, filename)
        if file is None:
            raise UserError(f"{path / filename}: file not found; the D3 format needs {', '.join(layout.values())}")
        windows[split], table = read_rows(file)
        tables.append((file, table))
        files[split] = file

    items_txt, item_json = find_file(path, "items.txt"), find_file(path, "item.json")
    if items_txt is not None:
        catalogue, titles_from = read_items_txt(items_txt), items_txt
    elif item_json is not None:
        catalogue, titles_from = read_item_json(item_json)[["item", "title"]], item_json
    else:
        catalogue, titles_from = inline_titles(tables), None
    if item_json is not None:
        extras = read_item_json(item_json).drop(columns="title")
        catalogue = catalogue.merge(extras, on="item", how="left").fillna("")

    known = set(catalogue["item"])
    origin = titles_from.name if titles_from is not None else "the item_title column"
    for split, frame in windows.items():
        check_known(files[split], frame["_line"], frame["items"], known, "history_item_id/item_id", origin)
        windows[split] = frame.drop(columns="_line")
    notes = [] if has_train else ["no train.csv: valid.csv is the training pool, test.csv the test split"]
    return SourceData(
        name=name, format="d3", domain=domain_for(name, "d3"), catalogue=catalogue,
        windows=windows, notes=notes,
    )
