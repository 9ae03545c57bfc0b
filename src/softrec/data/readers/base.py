"""The common in-memory form every reader produces: `SourceData`, its domain words, and the checks of
its ids and titles.

A reader turns one source format into a `SourceData`:

- `catalogue`: one row per item, columns `item` (the source's own id, a string), `title` (raw text,
  normalised later by the protocol) and any extra fields the source has (year, genres, brand...);
- either `interactions` (columns `user`, `item`, `timestamp`, in file order) for full logs, or
  `windows` (split name -> rows with `user`, `items` (ids in time order; the last is the target)
  and `timestamp` (the target's time, NaN when the source has none)) for pre-windowed sources.

Every malformed input raises `DataFormatError` naming the file, the line or field, and what was
expected; callers never see a pandas or codec traceback. The checked input the readers share is in
`files` (bytes, text, lines, limits), `jsontext` (strict JSON) and `tables` (delimited tables and
their columns).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from softrec.data.dataset import Domain
from softrec.data.readers.jsontext import json_line
from softrec.errors import DataFormatError


@dataclass
class SourceData:
    """A source read into memory, before any filtering (see module docstring)."""

    name: str
    format: str
    domain: Domain
    catalogue: pd.DataFrame
    interactions: pd.DataFrame | None = None
    windows: dict[str, pd.DataFrame] | None = None
    # inputs, by a name that does not depend on where the data lives -> sha256 (or a description)
    sources: dict[str, str] = field(default_factory=dict)  # filled by read_source
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.interactions is None) == (self.windows is None):
            raise ValueError("a source holds either interactions or windows")


# ------------------------------------------------------------------ domains
# Prompt words per dataset (the reference's prompts, process.py): "Given a list of <items> the user has <verb> ...".
DOMAINS: dict[str, Domain] = {
    "demo": Domain("book", "books", "read"),
    "ml-100k": Domain("movie", "movies", "watched"),
    "amazon-books": Domain("book", "books", "read"),
    "amazon-industrial": Domain(
        "industrial and scientific product", "industrial and scientific products", "purchased"
    ),
}
FORMAT_DOMAINS: dict[str, Domain] = {"grouplens": DOMAINS["ml-100k"]}


def domain_for(name: str, fmt: str) -> Domain:
    """Known dataset names first, then the format's usual domain, then neutral words."""
    return DOMAINS.get(name) or FORMAT_DOMAINS.get(fmt) or Domain()



# ------------------------------------------------------------------ ids and titles
def check_unique_ids(where: Path | str, ids: Sequence[str], lines: Sequence[Any], raw: Sequence[str] | None = None,
                     column: str = "item") -> None:
    """Refuse an item listed twice, or two spellings of one number ("01" and "1"): the protocol
    orders and matches integer ids by value, so they would silently become one item."""
    raw = ids if raw is None else raw
    seen: dict[str, tuple[str, Any]] = {}
    for key, spelled, line in zip(ids, raw, lines, strict=True):
        canon = str(int(key)) if key.strip().lstrip("-").isdigit() else key
        if canon in seen:
            first, first_line = seen[canon]
            at = f"{where}:{line}" if line is not None else str(where)
            if spelled == first:
                raise DataFormatError(at, f"field '{column}': id {spelled!r} is listed twice (first on line "
                                      f"{first_line}); expected unique ids")
            raise DataFormatError(at, f"field '{column}': id {spelled!r} is the same number as id {first!r} "
                                  f"(line {first_line}); expected one spelling per item, unique ids")
        seen[canon] = (spelled, line)


def check_spelling(path: Path, frame: pd.DataFrame, column: str, catalogue: pd.Series, catalogue_path: Path) -> None:
    """An interaction's item id missing from the catalogue only because of its spelling ("01" for
    "1") would be dropped as untitled without a word: refuse it."""
    known = set(catalogue)
    ids = frame[column].str.strip()
    unknown = ids[~ids.isin(known)]
    if unknown.empty:
        return
    canon = {str(int(k)): k for k in known if k.isdigit()}
    for index, key in unknown.items():
        if key.isdigit() and str(int(key)) in canon:
            raise DataFormatError(
                f"{path}:{frame.at[index, '_line']}", f"field '{column}': id {key!r} is not in "
                f"{catalogue_path.name}, which lists {canon[str(int(key))]!r}; expected the same spelling"
            )


def check_json_ids(path: Path, text: str, keys: Sequence[str], items: Sequence[str], column: str) -> None:
    """`check_unique_ids` for the keys of a JSON object (`items`: the keys as normalised ids); the
    lines are looked up only for the pair that collides."""
    if len(set(items)) == len(items):
        return
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if item in first:
            pair = [first[item], index]
            check_unique_ids(path, [items[i] for i in pair], [json_line(text, "key", keys[i]) for i in pair],
                             [keys[i] for i in pair], column=column)
        first[item] = index


def _invisible(char: str) -> bool:
    """Control characters (except tab and line breaks, which the protocol turns into spaces) and
    format characters: zero-width spaces/joiners, bidi marks and overrides, soft hyphens, BOMs."""
    return unicodedata.category(char) in ("Cc", "Cf") and char not in "\t\n\r"


_CANDIDATES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f"
                         r"\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
                         r"\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
                         r"\U0001d173-\U0001d17a\U000e0001-\U000e007f]")


def strip_invisible(source: SourceData) -> SourceData:
    """Remove invisible characters (`_invisible`) from titles, counted in a note: they make two
    titles look the same while differing (or reorder what is shown), and the model cannot see them."""
    titles = source.catalogue["title"]
    counts: dict[str, int] = {}
    changed = 0
    cleaned = []
    for title in titles:
        if isinstance(title, str) and _CANDIDATES.search(title):
            kept = "".join(c for c in title if not _invisible(c))
            for c in title:
                if _invisible(c):
                    counts[c] = counts.get(c, 0) + 1
            changed += kept != title
            title = kept
        cleaned.append(title)
    if changed:
        source.catalogue = source.catalogue.assign(title=cleaned)
        kinds = ", ".join(
            f"U+{ord(c):04X} {unicodedata.name(c, 'control')} x{n}"
            for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        )
        source.notes.append(
            f"titles: removed {sum(counts.values())} invisible control/format character(s) from {changed} "
            f"title(s) ({kinds}{', ...' if len(counts) > 5 else ''})"
        )
    return source
