"""Checked raw input: regular files only, bounded decompression, bytes decoded to text with the line
of any bad byte, streamed lines of bounded length; input checksums and file lookup."""

from __future__ import annotations

import gzip
import io
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softrec.errors import DataFormatError, UserError

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

