"""Readers: one module per source format, each -> a `SourceData` (see `base.py`).

| format | module | what it reads |
| --- | --- | --- |
| `recbole` | `recbole.py` | RecBole atomic files (`ml-100k.inter` + `ml-100k.item`) |
| `windows` | `windows.py` | SOFT/BIGRec/MSL sliding-window CSV + `id2name4Rec.json` |
| `d3` | `d3.py` | D3 CSV with inline titles (+ `items.txt` / `item.json`) |
| `amazon2023` | `amazon2023.py` | raw Amazon Reviews 2023 reviews + `meta_*.jsonl`, plain or gzip |
| `grouplens` | `grouplens.py` | GroupLens `ml-100k.zip` (`u.data`, `u.item`) |
| `csv` | `generic.py` | `interactions.csv` (user,item,timestamp) + `items.csv` (item,title) |

`detect_format` recognises each from its files; `read_source` reads a directory (or zip) with the
given or detected format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from softrec.data.readers import amazon2023, d3, generic, grouplens, recbole, windows
from softrec.data.readers.base import SourceData, strip_invisible
from softrec.data.readers.files import find_file, input_checksums
from softrec.data.readers.tables import header_fields
from softrec.errors import UserError

READERS: dict[str, Callable[[Path, str], SourceData]] = {
    "recbole": recbole.read,
    "windows": windows.read,
    "d3": d3.read,
    "amazon2023": amazon2023.read,
    "grouplens": grouplens.read,
    "csv": generic.read,
}


def _header(path: Path | None) -> list[str]:
    if path is None or path.suffix == ".gz" or not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        return header_fields(fh.readline(1 << 16).rstrip("\r\n"), ",")  # bounded: a header only


def detect_format(path: Path) -> str:
    """The format of the files at `path`, from their names and headers."""
    if path.is_file():
        if path.suffix == ".zip":
            return "grouplens"
        raise UserError(f"{path}: expected a dataset directory (or a MovieLens .zip), found a file")
    if not path.is_dir():
        raise UserError(f"{path}: no such dataset directory")
    if any(path.glob("*.inter")):
        return "recbole"
    if find_file(path, *windows.TITLE_FILES) or "item_ids" in _header(find_file(path, "train.csv")):
        return "windows"
    if any("history_item_id" in _header(find_file(path, n)) for n in ("valid.csv", "test.csv", "train.csv")):
        return "d3"
    if any(p.name.startswith("meta_") and ".jsonl" in p.name for p in path.iterdir()):
        return "amazon2023"
    if (path / "u.data").is_file() or any(path.glob("ml-100k*.zip")):
        return "grouplens"
    if (path / generic.INTERACTIONS).is_file() or generic.find_pair(path) is not None:
        return "csv"
    raise UserError(
        f"{path}: could not recognise the dataset files; expected one of: RecBole *.inter + *.item, "
        "train.csv/test.csv + id2name4Rec.json, D3 valid.csv/test.csv, Amazon 2023 meta_*.jsonl + "
        "reviews, ml-100k.zip, or interactions.csv + items.csv (or pass --format)"
    )


def data_dir() -> Path | None:
    """Where dataset NAMEs live: $SOFTREC_DATA_DIR, else ../shared/data beside the CWD if present."""
    env = os.environ.get("SOFTREC_DATA_DIR")
    if env:
        return Path(env)
    default = Path("..") / "shared" / "data"
    return default if default.is_dir() else None


@dataclass(frozen=True)
class Located:
    """A dataset found by name or path: what it is called, its format, and where it lives."""

    name: str
    format: str
    path: Path | None  # None for the built-in demo

    def describe(self) -> str:
        return "the built-in demo (synthetic readers, real books)" if self.path is None else str(self.path)

    def checksums(self) -> dict[str, str]:
        if self.path is None:
            from softrec.data.demo import demo_sources

            return demo_sources()
        return input_checksums(self.path)

    def read(self) -> SourceData:
        if self.path is None:
            from softrec.data.demo import load_demo

            return load_demo()
        return strip_invisible(READERS[self.format](self.path, self.name))


def locate(dataset: str, fmt: str | None = None) -> Located:
    """NAME_OR_DIR -> Located: `demo` is built in; an existing path is read directly; a NAME is
    looked up under `data_dir()`, then among the public sources `softrec.data.download` can fetch."""
    from softrec.data import download

    if fmt is not None and fmt not in READERS and fmt != "demo":
        raise UserError(f"unknown format '{fmt}': expected one of {', '.join(READERS)}")
    if dataset == "demo" or fmt == "demo":
        return Located("demo", "demo", None)
    path = Path(dataset).expanduser()
    root = data_dir()
    if not path.exists() and root is not None and "/" not in dataset and (root / dataset).exists():
        path = root / dataset
    if not path.exists():
        if download.is_known(dataset):
            path = download.fetch(dataset)
        else:
            where = f"{root}/{dataset}" if root is not None else "$SOFTREC_DATA_DIR (not set)"
            from softrec.suggest import did_you_mean

            local = [p.name for p in root.iterdir() if p.is_dir()] if root is not None and root.is_dir() else []
            known = ["demo", *download.SOURCES, *local]
            raise UserError(
                f"dataset '{dataset}': not a directory, not found at {where}, and not a "
                f"downloadable name ({', '.join(download.names())}); pass a DIR or set SOFTREC_DATA_DIR"
                f"{did_you_mean(dataset, known)}"
            )
    name = path.stem if path.is_file() else path.resolve().name
    if download.is_known(dataset):
        name = dataset
    return Located(name, fmt or detect_format(path), path)


def read_source(path: str | Path, fmt: str | None = None, name: str | None = None) -> SourceData:
    """Read one dataset directory (or zip) into memory, without filtering."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise UserError(f"unknown format '{fmt}': expected one of {', '.join(READERS)}")
    if not path.exists():
        raise UserError(f"{path}: no such dataset directory")
    name = name or (path.stem if path.is_file() else path.name)
    return strip_invisible(READERS[fmt](path, name))


__all__ = ["READERS", "Located", "SourceData", "data_dir", "detect_format", "locate", "read_source"]
