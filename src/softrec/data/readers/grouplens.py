"""Raw GroupLens MovieLens-100K: `ml-100k.zip` (as downloaded) or a directory with its files.

- `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`, no header;
- `u.item`: `id|title|release date|video release date|IMDb URL|19 genre flags`, no header,
  ISO-8859-1 encoded (as GroupLens publishes it). Titles keep GroupLens' form, "Toy Story (1995)".
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import pandas as pd

from softrec.data.readers.base import SourceData, check_spelling, check_unique_ids, domain_for
from softrec.data.readers.files import (
    MAX_INFLATE_RATIO,
    check_regular,
    decode,
    inflate_limit,
    too_large,
)
from softrec.data.readers.tables import fail_at, numeric, read_table, require_values
from softrec.errors import DataFormatError, UserError

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
ITEM_FIELDS = ["item", "title", "release_date", "video_release_date", "url", *GENRES]
# The zip's members may expand at most this much in all, beside base.MAX_INFLATE_RATIO (ML-100K's
# u.data is 2 MB; a 202 KB zip once expanded to 100 MB and took 9.7 GB of memory).
MAX_MEMBER_BYTES = 64 << 20
SUPPORTED = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def _read_member(archive: zipfile.ZipFile, zip_path: Path, member: str) -> bytes:
    """One member, refused before reading when encrypted, compressed in an unsupported way, or
    (by its declared sizes) too large, and stopped while reading if it expands past that."""
    info = archive.getinfo(member)
    where = f"{zip_path}!{member}"
    if info.flag_bits & 0x1:
        raise DataFormatError(where, "the zip member is encrypted; expected the unencrypted GroupLens ml-100k.zip")
    if info.compress_type not in SUPPORTED:
        raise DataFormatError(
            where, f"zip compression method {info.compress_type} is not supported; expected "
            "stored or deflate (re-zip it, or extract it and pass the directory)"
        )
    limit = min(MAX_MEMBER_BYTES, inflate_limit(info.compress_size))
    if info.file_size > limit:
        raise DataFormatError(
            where, f"declares {info.file_size:,} bytes uncompressed from {info.compress_size:,} (limit "
            f"{limit:,}: at most {MAX_INFLATE_RATIO}x and {MAX_MEMBER_BYTES >> 20} MiB); refusing a likely "
            "decompression bomb (extract it yourself and pass the directory if it is genuine)"
        )
    out = bytearray()
    with archive.open(info) as fh:
        while block := fh.read(1 << 20):
            out += block
            if len(out) > limit:
                raise too_large(where, info.compress_size, limit)
    return bytes(out)


def _members(path: Path) -> tuple[dict[str, bytes], Path]:
    """u.data and u.item bytes, from a zip file, a directory holding the zip, or an extracted dir."""
    zip_path = path if path.is_file() else next(iter(sorted(path.glob("ml-100k*.zip"))), None)
    if zip_path is None:
        files = {name: path / name for name in ("u.data", "u.item")}
        for file in files.values():
            if not file.exists() and not file.is_symlink():
                raise UserError(f"{file}: file not found; expected MovieLens-100K u.data and u.item")
            check_regular(file)
        return {name: file.read_bytes() for name, file in files.items()}, path
    check_regular(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            out = {}
            for name in ("u.data", "u.item"):
                member = next((m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name), None)
                if member is None:
                    raise DataFormatError(str(zip_path), f"no {name} inside the zip; expected the GroupLens ml-100k.zip")
                out[name] = _read_member(archive, zip_path, member)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise DataFormatError(str(zip_path), f"not a readable zip file ({exc}); download it again") from None
    except (NotImplementedError, RuntimeError) as exc:  # what zipfile raises for what it cannot read
        raise DataFormatError(str(zip_path), f"cannot read this zip ({exc}); expected the GroupLens ml-100k.zip") from None
    return out, zip_path


def read(path: Path, name: str) -> SourceData:
    members, origin = _members(path)
    where = (lambda n: origin / n) if origin.is_dir() else (lambda n: Path(f"{origin}!{n}"))
    data_path, item_path = where("u.data"), where("u.item")
    for member, data in members.items():
        if not data.strip():
            raise DataFormatError(str(where(member)), "file is empty; expected data rows")
    data_text = decode(members["u.data"], str(data_path))
    ratings = read_table(data_path, [], sep="\t", text=data_text, header=["user", "item", "rating", "timestamp"])
    require_values(data_path, ratings, ["user", "item", "timestamp"])
    interactions = pd.DataFrame({
        "user": ratings["user"].str.strip(), "item": ratings["item"].str.strip(),
        "timestamp": numeric(data_path, ratings, "timestamp"),
    })
    item_text = decode(members["u.item"], str(item_path), encoding="latin-1")
    items = read_table(item_path, [], sep="|", text=item_text, header=ITEM_FIELDS)
    require_values(item_path, items, ["item"])
    flags = items[list(GENRES)]
    fail_at(item_path, items, ~flags.isin(["0", "1"]).all(axis=1), GENRES[0], "genre flags 0 or 1")
    genres = [" ".join(g for g, f in zip(GENRES, row, strict=True) if f == "1") for row in flags.itertuples(index=False)]
    catalogue = pd.DataFrame({
        "item": items["item"].str.strip(), "title": items["title"],
        "release_date": items["release_date"].str.strip(), "genres": genres,
    })
    check_unique_ids(item_path, list(catalogue["item"]), list(items["_line"]))
    check_spelling(data_path, ratings, "item", catalogue["item"], item_path)
    return SourceData(
        name=name, format="grouplens", domain=domain_for(name, "grouplens"), catalogue=catalogue,
        interactions=interactions,
    )
