"""Ownership of directories: a `.softrec` marker names the kind of every directory softrec
creates, so a command never writes over, or deletes, files it did not make; exclusive locks
against two writers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.runs.files import apply_umask, atomic_write_json, dir_mode, dumps_json, os_error

LOCK = ".lock"
MARKER = ".softrec"


# ---------------------------------------------------------------- a directory built whole
@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None, *, legacy: tuple[str, ...] = ()) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it replaces `path` only if the block succeeds.

    With `kind`, the directory is softrec's: a `.softrec` marker in it lists the files the block
    wrote, and an existing `path` is replaced only if it holds nothing else (files the user added
    make it a UserError, before the block runs). `legacy` names the files an older softrec wrote
    without a marker. The replaced directory goes to a uniquely named sibling, never `.NAME.old`.
    """
    path = Path(path)
    if kind is not None:
        check_replaceable(path, kind, legacy=legacy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, dir_mode())
    except OSError as exc:
        raise os_error(path, exc) from None
    try:
        yield tmp
        if kind is not None:
            names = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
            (tmp / MARKER).write_text(dumps_json({"kind": kind, "files": names}), encoding="utf-8")
        apply_umask(tmp)
        if path.exists():
            old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise os_error(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- markers
def read_marker(path: str | Path) -> dict[str, Any] | None:
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"kind": "?"}
    return data if isinstance(data, dict) else {"kind": "?"}


def _foreign(path: Path, kind: str, legacy: tuple[str, ...]) -> str | None:
    """Why `path` (an existing directory) is not a softrec `kind` directory, or None if it is."""
    marker = read_marker(path)
    if marker is not None:
        if marker.get("kind") != kind:
            return f"it is a softrec {marker.get('kind')} directory, not a {kind} directory"
        return None
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if not entries or any((path / name).exists() for name in legacy):
        return None
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"it is not empty ({shown}) and softrec did not create it"


def claim_dir(path: str | Path, kind: str, *, legacy: tuple[str, ...] = ()) -> Path:
    """Make `path` a softrec `kind` directory (creating it), or UserError when it is someone else's.

    Accepted: a missing or empty directory, one with a `.softrec` marker of this kind, or one an
    older softrec made (holding a `legacy` file). Anything else is refused before anything is
    written, so a foreign `--out` is left exactly as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory; choose another --out")
    if path.is_dir():
        why = _foreign(path, kind, legacy)
        if why is not None:
            raise UserError(f"{path}: {why}; choose a new or empty directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if read_marker(path) is None:
            atomic_write_json(path / MARKER, {"kind": kind})
    except OSError as exc:
        raise os_error(path, exc) from None
    return path


def check_replaceable(path: Path, kind: str, *, legacy: tuple[str, ...] = ()) -> None:
    """UserError unless replacing directory `path` whole deletes only files softrec wrote there."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory; choose another --out")
    if not path.is_dir():
        return
    marker = read_marker(path)
    if marker is not None and marker.get("kind") != kind:
        raise UserError(f"{path}: it is a softrec {marker.get('kind')} directory, not a {kind} directory; "
                        "choose another directory")
    ours = set(marker.get("files", [])) if marker is not None else set(legacy)
    extra = sorted(p.name for p in path.iterdir() if p.name not in ours | {MARKER, LOCK})
    if extra:
        shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise UserError(f"{path}: holds files softrec did not write ({shown}); move them away or choose "
                        "another directory")


# ---------------------------------------------------------------- locks
def acquire_lock(lock_path: Path, busy: str) -> Any:
    """An exclusive, non-blocking inter-process lock (filelock: POSIX and Windows); UserError(busy)
    when another process holds it. Returns the lock; call .release()."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise UserError(busy) from None
    except OSError as exc:
        raise os_error(lock_path.parent, exc) from None
    return lock


@contextlib.contextmanager
def dir_lock(lock_path: Path, busy: str, *, remove: bool = False) -> Iterator[None]:
    """`acquire_lock` for a block. `remove`: delete the lock file afterwards (a lock kept beside a
    directory, in the user's folder, is not left there as debris)."""
    lock = acquire_lock(lock_path, busy)
    try:
        yield
    finally:
        if remove:  # unlink while still holding it: a process that opened it meanwhile fails to lock
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        lock.release()

