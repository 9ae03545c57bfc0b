"""Files written atomically with the permissions the umask allows, JSON in and out, and one-line
errors for failed writes.

Every file is written to a temporary sibling and renamed into place, so a crash leaves either the
old file or none, never half of one; `clean_leftovers` removes the temporary files a killed writer
left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from softrec.errors import UserError

# what tempfile.mkstemp/mkdtemp leave behind when a writer is killed: .<name>.<8 chars>.tmp|.old
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")


# ---------------------------------------------------------------- permissions and OS errors
def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file: what open() would give (0666 less the umask), not mkstemp's 0600."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def apply_umask(root: str | Path) -> None:
    """Give the files and directories under `root` the modes the umask allows. Libraries that write
    weights (safetensors) create 0600 files; a run is meant to be readable as any other file."""
    files, dirs = file_mode(), dir_mode()
    for folder, dirnames, filenames in os.walk(root):
        os.chmod(folder, dirs)
        for name in filenames:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, files)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(folder, d))]


def os_error(where: str | Path, exc: OSError) -> UserError:
    """One line for a failed write: disk full, read-only, permission denied, a file in the way."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted", errno.ENOTDIR: "a path component is a file",
              errno.EEXIST: "exists and is not a directory"}.get(exc.errno, exc.strerror or str(exc))
    return UserError(f"{where}: cannot write ({reason}); free space, fix permissions or choose another --out")


def probe_writable(folder: str | Path) -> None:
    """UserError now, not after hours of work, when `folder` cannot take a new file (read-only,
    no permission, a file in the way). Creates `folder` if needed; leaves nothing behind."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise os_error(folder, exc) from None


# ---------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(path, exc) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise os_error(path, exc) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Stable JSON: sorted keys, so equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


def write_jsonl(path: str | Path, rows: Any) -> Path:
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, lines)


def read_json_object(path: str | Path, fix: str = "restore or rebuild it") -> dict[str, Any]:
    """A JSON object from `path`; UserError (one line naming the file) when it does not parse."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, expected a JSON file; {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{number}: not a JSON line (truncated file?)") from None
    return rows


# ---------------------------------------------------------------- leftovers of killed writers
def clean_leftovers(folder: Path, name: str | None = None, *, recursive: bool = False) -> None:
    """Remove the temporary files/directories a killed atomic write left in `folder` (only names
    of the form `.<name>.<8 chars>.tmp|.old` that mkstemp/mkdtemp produce; with `name`, only those
    of that one target). Call it only while holding the lock that covers `folder`."""
    if not folder.is_dir():
        return
    walker = os.walk(folder) if recursive else [(str(folder), [], [])]
    for root, _dirs, _files in walker:
        for entry in os.scandir(root):
            if not _LEFTOVER.match(entry.name) or (name and not entry.name.startswith(f".{name}.")):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

