"""RecBole atomic files (`NAME.inter` + `NAME.item`), e.g. RecBole's `ml-100k/`.

Tab-separated with one header line of `name:type` fields. The interaction file needs `user_id`,
`item_id` and `timestamp`; the item file needs `item_id` and a title field (`movie_title`,
`title`, ...). Other item fields become catalogue extras.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from softrec.data.readers.base import SourceData, check_spelling, check_unique_ids, domain_for
from softrec.data.readers.files import read_text
from softrec.data.readers.tables import numeric, read_table, require_values
from softrec.errors import DataFormatError, UserError

TITLE_FIELDS = ("movie_title", "title", "item_name", "book_title", "name")


def _field(name: str) -> str:
    return name.split(":", 1)[0].strip()


def inter_file(path: Path) -> Path:
    """`DIR/DIR.inter` when present, else the only `*.inter` file."""
    preferred = path / f"{path.name}.inter"
    if preferred.is_file():
        return preferred
    found = sorted(path.glob("*.inter"))
    if len(found) != 1:
        raise UserError(f"{path}: expected one RecBole .inter file, found {len(found)}")
    return found[0]


def read(path: Path, name: str) -> SourceData:
    inter_path = inter_file(path)
    item_path = inter_path.with_suffix(".item")
    if not item_path.exists():  # not is_file(): a FIFO or device is refused by name when read
        raise UserError(f"{item_path}: file not found; RecBole item titles are read from NAME.item")
    inter = read_table(inter_path, ["user_id", "item_id", "timestamp"], sep="\t", rename=_field)
    require_values(inter_path, inter, ["user_id", "item_id"])
    interactions = pd.DataFrame({
        "user": inter["user_id"].str.strip(),
        "item": inter["item_id"].str.strip(),
        "timestamp": numeric(inter_path, inter, "timestamp"),
    })

    text = read_text(item_path)
    items = read_table(item_path, ["item_id"], sep="\t", rename=_field, text=text)
    title_field = next((f for f in TITLE_FIELDS if f in items.columns), None)
    if title_field is None:
        raise DataFormatError(
            f"{item_path}:1", f"missing a title column; expected one of {', '.join(TITLE_FIELDS)}"
        )
    require_values(item_path, items, ["item_id"])
    extras = [c for c in items.columns if c not in ("item_id", title_field, "_line")]
    catalogue = pd.DataFrame({"item": items["item_id"].str.strip(), "title": items[title_field]})
    check_unique_ids(item_path, list(catalogue["item"]), list(items["_line"]), column="item_id")
    check_spelling(inter_path, inter, "item_id", catalogue["item"], item_path)
    for column in extras:
        catalogue[column] = items[column].str.strip()
    return SourceData(
        name=name, format="recbole", domain=domain_for(name, "recbole"), catalogue=catalogue,
        interactions=interactions,
    )
