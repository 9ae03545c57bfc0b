"""The common in-memory form every reader produces, and the checked file I/O they share.

A reader turns one source format into a `SourceData`:

- `catalogue`: one row per item, columns `item` (the source's own id, a string), `title` (raw text,
  normalised later by the protocol) and any extra fields the source has (year, genres, brand...);
- either `interactions` (columns `user`, `item`, `timestamp`, in file order) for full logs, or
  `windows` (split name -> rows with `user`, `items` (ids in time order; the last is the target)
  and `timestamp` (the target's time, NaN when the source has none)) for pre-windowed sources.

Every malformed input raises `DataFormatError` naming the file, the line or field, and what was
expected; callers never see a pandas or codec traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from softrec.data.dataset import Domain
from softrec.errors import DataFormatError, UserError


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
# Prompt words per dataset (SOFT.md section 3): "Given a list of <items> the user has <verb> ...".
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


# ------------------------------------------------------------------ raw bytes and text
def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz; truncated or corrupt gzip is a DataFormatError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: expected a file, found a directory") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataFormatError(
                str(path), f"truncated or corrupt gzip file ({exc}); download it again"
            ) from None
    return data


def decode(data: bytes, where: str, encoding: str = "utf-8") -> str:
    """Strict decoding; a bad byte is reported with its line number."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{where}:{line}", f"byte 0x{data[exc.start]:02x} is not valid {encoding.upper()}; "
            f"expected {encoding.upper()} text (re-save the file as {encoding.upper()})"
        ) from None
    return text.removeprefix("\ufeff")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    text = decode(read_bytes(path), str(path), encoding)
    if not text.strip():
        raise DataFormatError(str(path), "file is empty; expected data rows")
    return text


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a possibly huge, possibly gzipped UTF-8 file, streamed."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):  # noqa: B007 - number is reported after the loop
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        f"{path}:{number}", f"byte 0x{raw[exc.start]:02x} is not valid UTF-8; "
                        "expected UTF-8 text"
                    ) from None
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            str(path), f"truncated or corrupt gzip file after line {number} ({exc}); download it again"
        ) from None
    if number == 0:
        raise DataFormatError(str(path), "file is empty; expected data rows")


# ------------------------------------------------------------------ tables
_DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def header_fields(first_line: str, sep: str) -> list[str]:
    return next(csv.reader([first_line], delimiter=sep)) if first_line else []


def check_header(
    path: Path, names: Sequence[str], required: Sequence[str], sep: str, first_line: str
) -> None:
    """Empty header, wrong delimiter, duplicate and missing columns, each with its own message."""
    where = f"{path}:1"
    expected = ", ".join(required)
    if not first_line.strip():
        raise DataFormatError(where, f"empty header line; expected columns {expected}")
    if len(names) == 1 and len(required) > 1:
        for other, label in _DELIMITERS.items():
            if other != sep and other in first_line:
                raise DataFormatError(
                    where, f"columns are separated by {label}s; expected {_DELIMITERS[sep]}-separated "
                    f"columns {expected} (wrong delimiter?)"
                )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataFormatError(where, f"duplicate column '{name}' in the header; expected {expected}")
        seen.add(name)
    missing = [c for c in required if c not in seen]
    if missing:
        raise DataFormatError(
            where, f"missing column '{missing[0]}'; expected columns {expected}, found {', '.join(names)}"
        )


_PANDAS_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_table(
    path: Path,
    required: Sequence[str],
    *,
    sep: str = ",",
    rename: Callable[[str], str] | None = None,
    text: str | None = None,
    header: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A delimited file with a header, every cell a string, header checked first.

    `rename` maps header names to the reader's names before `required` is checked (e.g. RecBole's
    `item_id:token` -> `item_id`). `header` gives the column names of a file without a header line.
    Rows keep file order; `_line` holds each row's line number.
    """
    if text is None:
        text = read_text(path)
    first_line = text.split("\n", 1)[0].rstrip("\r")
    if header is None:
        raw_names = header_fields(first_line, sep)
        names = [rename(n) if rename else n for n in raw_names]
        check_header(path, names, required, sep, first_line)
    else:
        names = list(header)
        if len(names) > 1 and sep not in first_line:
            for other, label in _DELIMITERS.items():
                if other in first_line:
                    raise DataFormatError(
                        f"{path}:1", f"fields are separated by {label}s; expected {len(names)} "
                        f"{_DELIMITERS[sep]}-separated fields ({', '.join(names[:4])}, ...) (wrong delimiter?)"
                    )
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False,
            skip_blank_lines=False, header=None if header is not None else 0, names=names,
            engine="c", quoting=csv.QUOTE_NONE if header is not None else csv.QUOTE_MINIMAL,
        )
    except pd.errors.ParserError as exc:
        match = _PANDAS_LINE.search(str(exc))
        if match:
            want, line, got = match.groups()
            raise DataFormatError(f"{path}:{line}", f"expected {want} fields, found {got}") from None
        raise DataFormatError(str(path), f"not a valid delimited file ({exc})") from None
    frame["_line"] = range(1 if header is not None else 2, len(frame) + (1 if header is not None else 2))
    blank = frame[required].eq("").all(axis=1) if required else pd.Series(False, index=frame.index)
    frame = frame[~blank].reset_index(drop=True)
    if frame.empty:
        raise DataFormatError(str(path), f"no data rows after the header; expected rows of {', '.join(required)}")
    return frame


def fail_at(path: Path, frame: pd.DataFrame, bad: pd.Series, column: str, expected: str) -> None:
    """Raise for the first row where `bad` is true (no-op when none is)."""
    if bool(bad.any()):
        row = frame[bad].iloc[0]
        raise DataFormatError(
            f"{path}:{row['_line']}", f"field '{column}': expected {expected}, got {row[column]!r}"
        )


def require_values(path: Path, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    for column in columns:
        fail_at(path, frame, frame[column].str.strip().eq(""), column, "a value")


def numeric(path: Path, frame: pd.DataFrame, column: str, allow_dates: bool = False) -> pd.Series:
    """A column as float64; the first non-number is reported with its line.

    With `allow_dates`, ISO-8601 date/times are accepted too (converted to unix seconds).
    """
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna()
    if allow_dates and bool(bad.any()):
        dates = pd.to_datetime(frame.loc[bad, column].str.strip(), errors="coerce", format="ISO8601", utc=True)
        seconds = (dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        values = values.astype("float64")
        values[bad] = seconds
        bad = values.isna()
    what = "a number (unix time) or an ISO-8601 date" if allow_dates else "a number"
    fail_at(path, frame, bad, column, what)
    return values.astype("float64")


def id_lists(path: Path, frame: pd.DataFrame, column: str, min_len: int = 1) -> list[list[str]]:
    """Cells like `[12, 34]` (JSON / Python list of integer ids) -> lists of id strings."""
    out: list[list[str]] = []
    for cell, line in zip(frame[column], frame["_line"], strict=True):
        text = cell.strip()
        parts = None
        if text[:1] == "[" and text[-1:] == "]":
            parts = [p.strip().strip("'\"") for p in text[1:-1].split(",")] if text != "[]" else []
        if parts is None or not all(p.isdigit() for p in parts):
            raise DataFormatError(
                f"{path}:{line}", f"field '{column}': expected a list of integer ids like [12, 34], got {cell!r}"
            )
        if len(parts) < min_len:
            raise DataFormatError(
                f"{path}:{line}", f"field '{column}': expected at least {min_len} item ids "
                f"(history + target), got {len(parts)}"
            )
        out.append([p if p[0] != "0" or p == "0" else str(int(p)) for p in parts])
    return out


def check_known(path: Path, lines: Sequence[Any], lists: Sequence[Sequence[str]], known: set[str],
                column: str, catalogue: str) -> None:
    """Every id in every window must be in the catalogue the windows were built from."""
    for line, items in zip(lines, lists, strict=True):
        for item in items:
            if item not in known:
                raise DataFormatError(f"{path}:{line}", f"field '{column}': item id {item} is not in {catalogue}")


def input_checksums(path: Path) -> dict[str, str]:
    """sha256 of every input file, keyed by its name relative to the dataset (not where it lives)."""
    from softrec.runs import file_sha256

    if path.is_file():
        return {path.name: file_sha256(path)}
    files = (p for p in sorted(path.rglob("*")) if p.is_file())
    return {
        p.relative_to(path).as_posix(): file_sha256(p)
        for p in files
        if not any(part.startswith(".") for part in p.relative_to(path).parts)
    }


def find_file(directory: Path, *names: str) -> Path | None:
    """The first of `names` (plain or .gz) that exists in `directory`."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None
