"""Delimited tables read with the line of every bad row and field, and checks of their columns
(present, numeric, id lists, known ids)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from softrec.data.readers.files import read_text
from softrec.errors import DataFormatError

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


def _field_at(line: str, sep: str, names: Sequence[str]) -> str:
    """The column of physical `line` whose quoting is wrong: a quote never closed on the line, or
    text after a closing quote."""
    index, i, n = 0, 0, len(line)
    while i < n:
        if line[i] == '"':
            j = i + 1
            while (j := line.find('"', j)) >= 0 and line[j + 1:j + 2] == '"':
                j += 2
            if j < 0 or (j + 1 < n and line[j + 1] not in (sep, "\r")):
                break
            i = j + 1
        else:
            i = line.find(sep, i)
            if i < 0:
                break
        if i >= n or line[i] != sep:
            break
        i += 1
        index += 1
    return f"field '{names[index]}'" if index < len(names) else f"field {index + 1}"


def parse_rows(
    path: Path, text: str, sep: str, names: Sequence[str], *, quoting: int, first: int
) -> tuple[list[list[str]], list[int]]:
    """Strict CSV: rows with exactly len(names) fields (blank lines skipped) and the line each starts on.

    A quote left open (which would swallow the following rows into one value), text after a closing
    quote, and a value spanning several lines are refused with their line and field.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting, strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    want = len(names)
    start = 1
    try:
        for row in reader:
            if start >= first and row:
                end = reader.line_num
                if end > start:
                    column = next((i for i, v in enumerate(row) if "\n" in v or "\r" in v), 0)
                    name = names[column] if column < len(names) else str(column + 1)
                    raise DataFormatError(
                        f"{path}:{start}", f"field '{name}': a quoted value runs on to line {end} "
                        "(an unterminated quote?); expected one row per line"
                    )
                if len(row) != want:
                    raise DataFormatError(f"{path}:{start}", f"expected {want} fields, found {len(row)}")
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        physical = text.split("\n")
        at = reader.line_num
        field = _field_at(physical[start - 1] if start <= len(physical) else "", sep, names)
        if "unexpected end of data" in str(exc):
            raise DataFormatError(
                f"{path}:{start}", f"{field}: a quote opened on this line is never closed (unterminated "
                "quote); expected a closing quote at the end of the value"
            ) from None
        if at > start:
            raise DataFormatError(
                f"{path}:{start}", f"{field}: a quote opened on this line runs on to line {at} (unterminated "
                "quote?); expected one row per line"
            ) from None
        raise DataFormatError(
            f"{path}:{at}", f"{field}: not valid CSV ({exc}); a quoted value must end at its closing quote "
            "(write a quote inside a value as \"\")"
        ) from None
    return rows, lines


def _unquoted_table(path: Path, text: str, sep: str, names: Sequence[str], first: int) -> pd.DataFrame | None:
    """The fast path of `read_table` for text without quoting (most logs, and large ones): every
    line is one row, so the field count of each line is checked by counting separators (vectorised),
    then pandas' C parser reads it compactly."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if not len(data):
        return None
    breaks = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(data)]))
    seps = np.flatnonzero(data == ord(sep))
    counts = np.searchsorted(seps, ends) - np.searchsorted(seps, starts)
    length = ends - starts - (data[np.maximum(ends - 1, 0)] == 13)  # without a \r before the \n
    numbers = np.arange(1, len(starts) + 1)
    bad = (counts != len(names) - 1) & (length > 0) & (numbers >= first)
    if bool(bad.any()):
        at = int(np.argmax(bad))
        raise DataFormatError(f"{path}:{numbers[at]}", f"expected {len(names)} fields, found {counts[at] + 1}")
    rows = numbers[(length > 0) & (numbers >= first)]
    del data, breaks, starts, ends, seps, counts, length, bad, numbers
    frame = pd.read_csv(
        io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False,
        skip_blank_lines=True, header=None if first == 1 else 0, names=list(names),
        engine="c", quoting=csv.QUOTE_NONE,
    )
    if len(frame) != len(rows):  # cannot happen with the counts checked; never guess the lines
        return None
    frame["_line"] = rows
    return frame


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
    quoting = csv.QUOTE_NONE if header is not None else csv.QUOTE_MINIMAL
    first = 1 if header is not None else 2
    frame = None
    if (quoting == csv.QUOTE_NONE or '"' not in text) and text.count("\r") == text.count("\r\n"):
        frame = _unquoted_table(path, text, sep, names, first)
    if frame is None:
        rows, lines = parse_rows(path, text, sep, names, quoting=quoting, first=first)
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        frame = pd.DataFrame({n: pd.Series(values, dtype=str) for n, values in zip(names, columns, strict=True)})
        frame["_line"] = lines
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
    values = values.astype("float64")
    fail_at(path, frame, ~np.isfinite(values), column, what.replace("a number", "a finite number"))
    return values



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

