"""Checksums of files and directories, content keys of settings, and the environment a run
was made in (versions, git commit)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------- checksums and keys
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """Checksum of a file, or of a directory's files (relative names + bytes, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (settings, checksums, names)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    """Versions and provenance saved beside every config."""
    packages = {}
    for name in ("softrec", "torch", "transformers", "peft", "accelerate", "numpy", "pandas"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": packages,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The checkout's HEAD (with -dirty for uncommitted changes to tracked files), or for a built
    install the commit it was built from (softrec/_build.json, written by setup.py)."""
    here = Path(__file__).resolve().parent
    built = here.parent / "_build.json"
    if built.is_file():
        try:
            return str(json.loads(built.read_text())["git_commit"])
        except (OSError, ValueError, KeyError):
            return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here, capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")

