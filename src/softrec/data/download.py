"""Public sources downloaded by name into a cache, with checksum verification.

Names: `ml-100k` (the GroupLens zip), `amazon2023-video-games`, `amazon2023-movies-and-tv`,
`amazon2023-kindle-store` (the SOFT paper's three categories) and `amazon2023:<Category>` for any
Amazon Reviews 2023 category (e.g. `amazon2023:Industrial_and_Scientific`).

Files land in `$SOFTREC_CACHE/datasets/<name>/` (default `~/.cache/softrec/datasets/<name>/`).
Each file is verified against the publisher's checksum where one is known (GroupLens publishes
md5; ml-100k.zip's size and sha256 are pinned too) and always by sha256: a pinned one where known,
otherwise (Amazon Reviews 2023 publishes none) the sha256 measured at the first download is stored
beside the file (`.<file>.sha256`), a note on stderr says so, and every later use must match it.
Only https URLs are fetched (plain http only from the loopback host, for local mirrors and tests),
a redirect to plain http is refused, and a download shorter than its Content-Length is an error.

Without network, the error names the URL that failed and the path where the file can be placed
by hand; `softrec data prepare --dataset DIR` also reads a directory you filled yourself.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from softrec.errors import UserError


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    urls: tuple[str, ...]  # mirrors, tried in order
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None  # bytes, where published


@dataclass(frozen=True)
class RemoteSource:
    name: str
    description: str
    files: tuple[RemoteFile, ...]


AMAZON_2023_MIRRORS = (
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw",
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw",
)
AMAZON_2023_PREFIX = "amazon2023:"
SOFT_CATEGORIES = {
    "amazon2023-video-games": "Video_Games",
    "amazon2023-movies-and-tv": "Movies_and_TV",
    "amazon2023-kindle-store": "Kindle_Store",
}


def amazon2023(category: str, name: str | None = None) -> RemoteSource:
    def remote(kind: str, filename: str) -> RemoteFile:
        return RemoteFile(filename, tuple(f"{host}/{kind}/{filename}" for host in AMAZON_2023_MIRRORS))

    return RemoteSource(
        name or f"{AMAZON_2023_PREFIX}{category}",
        f"Amazon Reviews 2023, {category.replace('_', ' ')} (reviews + item metadata; McAuley Lab, UCSD)",
        (remote("review_categories", f"{category}.jsonl.gz"), remote("meta_categories", f"meta_{category}.jsonl.gz")),
    )


SOURCES: dict[str, RemoteSource] = {
    "ml-100k": RemoteSource(
        "ml-100k", "MovieLens 100K (GroupLens), the original zip",
        (RemoteFile("ml-100k.zip", ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
                    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                    md5="0e33842e24a9c977be4e0107933c0723", size=4_924_029),),
    ),
    **{name: amazon2023(category, name) for name, category in SOFT_CATEGORIES.items()},
}


def names() -> list[str]:
    return [*SOURCES, f"{AMAZON_2023_PREFIX}<Category>"]


def source(name: str) -> RemoteSource:
    if name in SOURCES:
        return SOURCES[name]
    if name.startswith(AMAZON_2023_PREFIX) and name[len(AMAZON_2023_PREFIX):].replace("_", "").isalnum():
        return amazon2023(name[len(AMAZON_2023_PREFIX):])
    raise UserError(f"unknown downloadable dataset '{name}': expected one of {', '.join(names())}")


def is_known(name: str) -> bool:
    try:
        source(name)
    except UserError:
        return False
    return True


def cache_root() -> Path:
    from softrec.paths import cache_dir

    return cache_dir(create=False) / "datasets"


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def verify(path: Path, remote: RemoteFile, sidecar: Path | None = None) -> None:
    """Raise unless `path` matches the pinned size and checksums, or the sha256 recorded at its
    first download (in `sidecar`, default beside `path`)."""
    sidecar = sidecar or _sidecar(path)
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise UserError(
            f"{path}: {size:,} bytes, expected {remote.size:,}; the file is truncated, corrupt or was "
            f"replaced: delete it and download again from {remote.urls[0]}"
        )
    sha, md5 = _digests(path)
    recorded = sidecar.read_text().strip() if sidecar.exists() else None
    for kind, expected, actual in (("sha256", remote.sha256 or recorded, sha), ("md5", remote.md5, md5)):
        if expected and expected != actual:
            origin = "" if remote.sha256 or kind == "md5" else (
                f" recorded in {sidecar} at its first download, as no checksum is published; delete that "
                "too only if you know the publisher changed the file")
            raise UserError(
                f"{path}: {kind} checksum mismatch (expected {expected}{origin}, got {actual}); the file is "
                f"corrupt or was replaced: delete it and download again from {remote.urls[0]}"
            )


def _loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def check_url(url: str) -> None:
    """https only; plain http is allowed from the loopback host alone (local mirrors, tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)):
        return
    raise UserError(f"{url}: refusing to download over {parts.scheme or 'an unknown scheme'}; expected an https URL")


def _record(dest: Path, sha: str) -> None:
    """Trust on first use, said out loud (stderr, so it never mixes with the command's output)."""
    _sidecar(dest).write_text(sha + "\n")
    print(f"softrec: note: {dest.name} has no published checksum; recorded its sha256 {sha} in "
          f"{_sidecar(dest)}: later uses must match it", file=sys.stderr)


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL `check_url` accepts (never downgrade https to http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        try:
            check_url(newurl)
        except UserError:
            raise urllib.error.URLError(f"redirected to {newurl}, which is not https") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpsRedirects)


def _download(url: str, part: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "softrec"})
    with _OPENER.open(request, timeout=timeout) as response, part.open("wb") as fh:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                  disable=None, leave=False) as bar:
            while block := response.read(1 << 20):
                fh.write(block)
                received += len(block)
                bar.update(len(block))
        if total is not None and received != total:
            raise OSError(f"incomplete download: {received:,} of {total:,} bytes")


def download_file(remote: RemoteFile, directory: Path, timeout: float = 60.0) -> Path:
    """`directory/remote.filename`, downloaded (mirrors in order) and verified unless cached."""
    dest = directory / remote.filename
    for url in remote.urls:
        check_url(url)
    if dest.exists():
        verify(dest, remote)
        if remote.sha256 is None and not _sidecar(dest).exists():  # placed by hand
            _record(dest, _digests(dest)[0])
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    errors = []
    for url in remote.urls:
        try:
            _download(url, part, timeout)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url} ({reason})")
            part.unlink(missing_ok=True)
            continue
        try:
            verify(part, remote, _sidecar(dest))
        except UserError as exc:
            part.unlink(missing_ok=True)
            raise UserError(f"{url}: downloaded file failed verification: {exc}") from None
        sha, _ = _digests(part)
        os.replace(part, dest)
        if remote.sha256 is None and not _sidecar(dest).exists():
            _record(dest, sha)
        return dest
    with contextlib.suppress(OSError):
        if not any(directory.iterdir()):
            shutil.rmtree(directory)
    raise UserError(
        f"could not download {'; '.join(errors)}; without network, download the file elsewhere and "
        f"place it at {dest} (or pass --dataset DIR)"
    )


def fetch(name: str, cache: Path | None = None, timeout: float = 60.0) -> Path:
    """The directory holding dataset `name`, downloading what is missing."""
    remote = source(name)
    directory = (cache or cache_root()) / remote.name.replace(":", "-")
    for file in remote.files:
        download_file(file, directory, timeout)
    return directory
