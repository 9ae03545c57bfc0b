"""Raw Amazon Reviews 2023 (McAuley Lab; the SOFT paper's source), one category per directory.

- reviews: `<Category>.jsonl[.gz]` (one review per line: `user_id`, `parent_asin`, `timestamp` in
  unix milliseconds, `rating`, ...) or the rating-only `<Category>.csv[.gz]`
  (`user_id,parent_asin,rating,timestamp`);
- metadata: `meta_<Category>.jsonl[.gz]` (one item per line: `parent_asin`, `title`,
  `main_category`, `store`, ...).

Items are keyed by `parent_asin` (as the SOFT reference does). Timestamps become unix seconds.
Items whose metadata has no title are dropped by the protocol (and counted), as the reference protocol requires.
Files are streamed, so multi-GB categories fit in memory as integer codes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from softrec.data.dataset import Domain
from softrec.data.readers.base import SourceData, domain_for
from softrec.data.readers.files import check_regular, iter_lines
from softrec.data.readers.jsontext import load_json
from softrec.data.readers.tables import numeric, read_table
from softrec.errors import DataFormatError, UserError

REVIEW_FIELDS = ("user_id", "parent_asin", "timestamp")
META_EXTRAS = ("main_category", "store")
CATEGORY_DOMAINS = {
    "Video_Games": Domain("video game", "video games", "played"),
    "Movies_and_TV": Domain("movie", "movies", "watched"),
    "Kindle_Store": Domain("book", "books", "read"),
    "Books": Domain("book", "books", "read"),
    "CDs_and_Vinyl": Domain("album", "albums", "listened to"),
}


def category_domain(category: str) -> Domain:
    if category in CATEGORY_DOMAINS:
        return CATEGORY_DOMAINS[category]
    words = category.replace("_and_", " and ").replace("_", " ").lower()
    return Domain(f"{words} product", f"{words} products", "purchased")


def find_files(path: Path) -> tuple[str, Path, Path]:
    """(category, reviews file, metadata file) in a directory holding one category."""
    metas = sorted(p for p in path.iterdir() if p.name.startswith("meta_") and ".jsonl" in p.name)
    if len(metas) != 1:
        found = ", ".join(p.name for p in metas) or "none"
        raise UserError(f"{path}: expected one meta_<Category>.jsonl[.gz] file, found {found}")
    category = metas[0].name.removeprefix("meta_").split(".jsonl")[0]
    for name in (f"{category}.jsonl", f"{category}.jsonl.gz", f"{category}.csv", f"{category}.csv.gz"):
        if (path / name).is_file():
            check_regular(metas[0])  # before the long read of the reviews, not after it
            return category, path / name, metas[0]
    raise UserError(f"{path}: no review file {category}.jsonl[.gz] or {category}.csv[.gz] beside {metas[0].name}")


def _json_rows(path: Path, fields: tuple[str, ...], what: str):
    for number, line in tqdm(iter_lines(path), desc=path.name, unit=" lines", disable=None, leave=False):
        if not line.strip():
            continue
        row = load_json(line, path, line=number, expected=f"one {what} per line")
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{number}", f"expected a JSON object ({what})")
        for name in fields:
            if name not in row or row[name] in (None, ""):
                raise DataFormatError(f"{path}:{number}", f"field '{name}' missing; expected {what} with {', '.join(fields)}")
        yield number, row


def read_reviews(path: Path) -> pd.DataFrame:
    if ".csv" in path.name:
        table = read_table(path, list(REVIEW_FIELDS))
        users, items = table["user_id"].str.strip(), table["parent_asin"].str.strip()
        return pd.DataFrame({"user": users, "item": items, "timestamp": numeric(path, table, "timestamp") / 1000.0})
    user_codes: dict[str, int] = {}
    item_codes: dict[str, int] = {}
    users, items, times = [], [], []
    for number, row in _json_rows(path, REVIEW_FIELDS, "review"):
        stamp = row["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
            raise DataFormatError(f"{path}:{number}", f"field 'timestamp': expected a finite number (unix ms), got {stamp!r}")
        users.append(user_codes.setdefault(str(row["user_id"]), len(user_codes)))
        items.append(item_codes.setdefault(str(row["parent_asin"]), len(item_codes)))
        times.append(float(stamp) / 1000.0)
    return pd.DataFrame({
        "user": pd.Categorical.from_codes(np.asarray(users, dtype=np.int64), list(user_codes)),
        "item": pd.Categorical.from_codes(np.asarray(items, dtype=np.int64), list(item_codes)),
        "timestamp": np.asarray(times, dtype=np.float64),
    })


def read_meta(path: Path, wanted: set[str]) -> pd.DataFrame:
    """Metadata of the `wanted` items; an item listed again is ignored when its title is the same
    and refused when it differs (which one is right?)."""
    rows, seen = [], {}
    for number, row in _json_rows(path, ("parent_asin",), "item metadata object"):
        asin = str(row["parent_asin"])
        if asin in wanted:
            title = row.get("title")
            title = title if isinstance(title, str) else ""
            if asin in seen:
                first_title, first_line = seen[asin]
                if title != first_title:
                    raise DataFormatError(
                        f"{path}:{number}", f"field 'title': item {asin} is listed again with title {title!r}, "
                        f"but line {first_line} titles it {first_title!r}; expected one title per item"
                    )
                continue
            seen[asin] = (title, number)
            rows.append((asin, title, *(str(row.get(f) or "") for f in META_EXTRAS)))
    return pd.DataFrame(rows, columns=["item", "title", *META_EXTRAS])


def read(path: Path, name: str) -> SourceData:
    category, reviews_path, meta_path = find_files(path)
    interactions = read_reviews(reviews_path)
    catalogue = read_meta(meta_path, set(interactions["item"].astype(str).unique()))
    domain = domain_for(name, "amazon2023")
    if domain == Domain():
        domain = category_domain(category)
    return SourceData(
        name=name, format="amazon2023", domain=domain, catalogue=catalogue,
        interactions=interactions,
        notes=[f"Amazon Reviews 2023 category {category}; items keyed by parent_asin"],
    )
