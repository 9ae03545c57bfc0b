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
import json
import os
import re
import stat
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
# Resource limits, checked before the work they would make long: compressed inputs may expand at
# most MAX_INFLATE_RATIO times (above 1 MiB, as tiny files compress very well), those read whole into
# memory to MAX_INFLATED_BYTES at most (streamed ones, like multi-GB Amazon reviews, have no absolute
# limit), and a streamed line may be at most MAX_LINE_BYTES long. A gzip trailer's declared size
# (ISIZE) over the limit is refused before decompressing; the limit is also enforced while reading.
MAX_INFLATE_RATIO = 100
MAX_INFLATED_BYTES = 4 << 30
MAX_LINE_BYTES = 64 << 20
_RATIO_FLOOR = 1 << 20


def check_regular(path: Path) -> None:
    """Refuse, before opening it, anything that is not a regular file (a FIFO would block forever,
    a device would never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: expected a file, found a directory")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise UserError(f"{path}: {kind}; expected a regular data file")


def inflate_limit(compressed: int, in_memory: bool = True) -> int:
    """The most bytes `compressed` bytes may expand to (see MAX_INFLATE_RATIO)."""
    limit = max(_RATIO_FLOOR, compressed * MAX_INFLATE_RATIO)
    return min(MAX_INFLATED_BYTES, limit) if in_memory else limit


def too_large(where: str, compressed: int, limit: int, size: int | None = None) -> DataFormatError:
    """`size`: what a gzip trailer declares (then the file may also just be cut short)."""
    what = f"declares {size:,} bytes uncompressed" if size is not None else f"expands past {limit:,} bytes"
    verdict = ("a likely decompression bomb, or a truncated or corrupt gzip file (download it again)"
               if size is not None else "a likely decompression bomb")
    return DataFormatError(
        where, f"{what} from {compressed:,} compressed (limit {limit:,}: {MAX_INFLATE_RATIO}x the "
        f"compressed size, and at most {MAX_INFLATED_BYTES >> 30} GiB read into memory): refusing {verdict}; "
        "decompress it yourself if it is genuine"
    )


def _gzip_declared(tail: bytes) -> int | None:
    """A gzip trailer's ISIZE (uncompressed size mod 2**32; a lower bound of the real size)."""
    return int.from_bytes(tail[-4:], "little") if len(tail) >= 18 else None


def _gunzip(path: Path, data: bytes) -> bytes:
    limit = inflate_limit(len(data))
    declared = _gzip_declared(data[-18:])
    if declared is not None and declared > limit and data[:2] == b"\x1f\x8b":
        raise too_large(str(path), len(data), limit, declared)
    out = bytearray()
    stream = io.BytesIO(data)
    try:
        with gzip.GzipFile(fileobj=stream) as fh:
            while block := fh.read(1 << 20):
                out += block
                if len(out) > limit:
                    raise too_large(str(path), len(data), limit)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            str(path), f"truncated or corrupt gzip file ({exc}); download it again"
        ) from None
    return bytes(out)


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz; truncated or corrupt gzip is a DataFormatError."""
    check_regular(path)
    data = path.read_bytes()
    return _gunzip(path, data) if path.suffix == ".gz" else data


def check_nul(text: str, where: str, first_line: int = 1) -> None:
    """A NUL character is never text: refuse it with its line."""
    at = text.find("\x00")
    if at >= 0:
        line = first_line + text.count("\n", 0, at)
        raise DataFormatError(
            f"{where}:{line}", "contains a NUL character (byte 0x00); expected plain text (a binary or "
            "UTF-16 file?)"
        )


def decode(data: bytes, where: str, encoding: str = "utf-8") -> str:
    """Strict decoding; a bad byte or a NUL is reported with its line number."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{where}:{line}", f"byte 0x{data[exc.start]:02x} is not valid {encoding.upper()}; "
            f"expected {encoding.upper()} text (re-save the file as {encoding.upper()})"
        ) from None
    check_nul(text, where)
    return text.removeprefix("\ufeff")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    text = decode(read_bytes(path), str(path), encoding)
    if not text.strip():
        raise DataFormatError(str(path), "file is empty; expected data rows")
    return text


class _Bounded(io.RawIOBase):
    """A gzip stream that stops with a DataFormatError past its inflate limit."""

    def __init__(self, fh: Any, path: Path, compressed: int):
        self.fh, self.path, self.compressed = fh, path, compressed
        self.limit, self.seen = inflate_limit(compressed, in_memory=False), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.fh.readinto(buffer)
        self.seen += n
        if self.seen > self.limit:
            raise too_large(str(self.path), self.compressed, self.limit)
        return n


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a possibly huge, possibly gzipped UTF-8 file, streamed."""
    check_regular(path)
    number = 0
    try:
        with path.open("rb") as raw_fh:
            if path.suffix == ".gz":
                size = os.fstat(raw_fh.fileno()).st_size
                if size >= 18:
                    raw_fh.seek(size - 4)
                    declared = _gzip_declared(b"\0" * 14 + raw_fh.read(4))
                    raw_fh.seek(0)
                    if declared is not None and declared > inflate_limit(size, in_memory=False):
                        raise too_large(str(path), size, inflate_limit(size, in_memory=False), declared)
                fh: Any = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=raw_fh), path, size), 1 << 20)
            else:
                fh = raw_fh
            while raw := fh.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise DataFormatError(
                        f"{path}:{number}", f"line longer than {MAX_LINE_BYTES:,} bytes; expected one "
                        "record per line (a file without line breaks?)"
                    )
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        f"{path}:{number}", f"byte 0x{raw[exc.start]:02x} is not valid UTF-8; "
                        "expected UTF-8 text"
                    ) from None
                check_nul(line, str(path), number)
                yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            str(path), f"truncated or corrupt gzip file after line {number} ({exc}); download it again"
        ) from None
    if number == 0:
        raise DataFormatError(str(path), "file is empty; expected data rows")


# ------------------------------------------------------------------ JSON
# Stricter than json.loads: standard JSON only (no NaN/Infinity), no key given twice with different
# values (json.loads keeps the last silently), no NUL in strings, nesting at most MAX_JSON_DEPTH.
MAX_JSON_DEPTH = 64
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(?:\s*:)?|[{}\[\]]|-?Infinity|NaN')
_JSON_NUL = re.compile(r'(?<!\\)(?:\\\\)*\\u0000')


class _JSONProblem(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind)
        self.kind, self.detail = kind, detail


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise _JSONProblem("duplicate", key)
            seen[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise _JSONProblem("constant", name)


_DECODER = json.JSONDecoder(object_pairs_hook=_json_pairs, parse_constant=_json_constant)  # built once: per call costs


def _too_deep(value: Any) -> bool:
    """Whether parsed JSON nests more than MAX_JSON_DEPTH containers (iterative, stops early)."""
    if not isinstance(value, dict | list):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _json_find(text: str, kind: str, detail: str = "") -> int | None:
    """Where (a character offset) the first `kind` problem of `text` is, by a small tokenizer that
    skips strings; None when it cannot tell. Only run on the error path (and for deep nesting)."""
    scopes: list[set[str] | None] = []
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("{", "["):
            scopes.append(set() if token == "{" else None)
            if kind == "depth" and len(scopes) > MAX_JSON_DEPTH:
                return match.start()
        elif token in ("}", "]"):
            if scopes:
                scopes.pop()
        elif token[0] != '"':
            if kind == "constant":
                return match.start()
        elif kind == "duplicate" and token[-1] == ":" and scopes and scopes[-1] is not None:
            try:
                key = json.loads(token[:-1].rstrip())
            except ValueError:
                continue
            if key == detail and key in scopes[-1]:
                return match.start()
            scopes[-1].add(key)
        elif kind == "key" and token[-1] == ":":
            try:
                if json.loads(token[:-1].rstrip()) == detail:
                    return match.start()
            except ValueError:
                continue
    return None


def json_line(text: str, kind: str, detail: str = "", first_line: int = 1) -> int | None:
    """The line of `_json_find`'s offset, counted from `first_line`."""
    at = _json_find(text, kind, detail)
    return None if at is None else first_line + text.count("\n", 0, at)


def load_json(text: str, path: Path | str, *, line: int | None = None, expected: str = "") -> Any:
    """Strict JSON (see above); `line` is the line number of `text` in `path` (JSON Lines)."""
    expect = f"; expected {expected}" if expected else ""
    first = line or 1

    def fail(at: int | None, problem: str) -> DataFormatError:
        at = line or at  # one JSON Lines record: its line, whatever the offset
        where = f"{path}:{at}" if at is not None else str(path)
        return DataFormatError(where, problem)

    nul = _JSON_NUL.search(text) if "\\u0000" in text else None
    if nul is not None:
        raise fail(first + text.count("\n", 0, nul.start()), "a string contains a NUL character (\\u0000); "
                   "expected plain text")
    too_deep = f"JSON nested more than {MAX_JSON_DEPTH} levels deep{expect}"
    try:
        value = _DECODER.decode(text)
        if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _too_deep(value):
            raise RecursionError
        return value
    except RecursionError:  # beyond the parser's own limit, or beyond MAX_JSON_DEPTH
        raise fail(json_line(text, "depth", first_line=first), too_deep) from None
    except json.JSONDecodeError as exc:
        raise fail(first + exc.lineno - 1, f"not valid JSON ({exc.msg}){expect}") from None
    except _JSONProblem as exc:
        at = json_line(text, exc.kind, exc.detail, first)
        if exc.kind == "constant":
            raise fail(at, f"non-standard JSON value {exc.detail} (not a finite number){expect}") from None
        raise fail(at, f"key {exc.detail!r} appears twice in one object with different values; "
                   "expected each key once (which value is right?)") from None


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
