"""Run directories: atomic writes, a lock against two writers, and a manifest of artefacts.

Every artefact is written to a temporary sibling and renamed into place, so a crash leaves either
the old artefact or none, never half of one. Each artefact is recorded in `manifest.json` with a
key (a hash of whatever it was computed from) and a checksum of its bytes; `RunDir.valid(...)`
says whether an artefact can be reused: it exists, its key matches and its bytes are intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softrec.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"


# ---------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    here = Path(__file__).resolve().parent
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


# ---------------------------------------------------------------- run directory
class RunDir:
    """A run directory with a manifest and an exclusive lock.

    Use as a context manager to hold the lock; a second process on the same directory gets a
    UserError naming the directory instead of corrupting it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fh = None

    # locking ------------------------------------------------------------
    def __enter__(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        fh = (self.path / LOCK).open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UserError(
                f"{self.path}: another softrec process is using this run directory; "
                "wait for it to finish or choose another --out"
            ) from None
        self._lock_fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # manifest -----------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        if not path.exists():
            return {"artefacts": {}}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            # A manifest is only ever replaced atomically; if it is unreadable, trust nothing.
            return {"artefacts": {}}

    def record(self, name: str, key: str, **info: Any) -> None:
        """Register artefact `name` (a path relative to the run dir) as built from `key`."""
        manifest = self.manifest()
        target = self.path / name
        manifest["artefacts"][name] = {
            "key": key,
            "sha256": path_sha256(target),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **info,
        }
        atomic_write_json(self.path / MANIFEST, manifest)

    def valid(self, name: str, key: str | None = None) -> bool:
        """True if artefact `name` exists, was built from `key` (if given) and is intact."""
        entry = self.manifest()["artefacts"].get(name)
        target = self.path / name
        if entry is None or not target.exists():
            return False
        if key is not None and entry.get("key") != key:
            return False
        return path_sha256(target) == entry.get("sha256")

    def check(self, name: str, rebuild: str) -> None:
        """UserError when artefact `name` is recorded but its bytes changed (truncated, edited,
        half-copied): it must be rebuilt (`rebuild` says how), never used. Unrecorded artefacts
        (made by hand or by an older softrec) pass."""
        entry = self.manifest()["artefacts"].get(name)
        target = self.path / name
        if entry is None or not target.exists():
            return
        if path_sha256(target) != entry.get("sha256"):
            raise UserError(f"{target}: corrupted (checksum differs from {self.path / MANIFEST}); {rebuild}")

    def invalidate(self, name: str) -> None:
        manifest = self.manifest()
        if manifest["artefacts"].pop(name, None) is not None:
            atomic_write_json(self.path / MANIFEST, manifest)

    def save_config(self, config: Any, inputs: dict[str, str] | None = None) -> None:
        """Save the resolved config with environment and input checksums (`config.yaml`, `run.json`)."""
        text = config.to_yaml() if hasattr(config, "to_yaml") else str(config)
        atomic_write_text(self.path / "config.yaml", text)
        info_path = self.path / "run.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        info.update({"environment": environment(), "inputs": inputs or {}})
        atomic_write_json(info_path, info)

    def update_info(self, **fields: Any) -> None:
        info_path = self.path / "run.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        info.update(fields)
        atomic_write_json(info_path, info)

    def info(self) -> dict[str, Any]:
        info_path = self.path / "run.json"
        return json.loads(info_path.read_text()) if info_path.exists() else {}


# ---------------------------------------------------------------- resumable chunked work
def resumable_chunks(
    parts: Path, n: int, size: int, compute: Callable[[int, int], list[dict]], *, write: bool = True
) -> list[dict]:
    """Rows for items [0, n), computed `size` items at a time by `compute(start, stop)`.

    Each finished chunk is written atomically to parts/<start>.jsonl and read back on a rerun, so
    a killed run redoes only the chunk it was in; a part that does not parse or has the wrong row
    count is recomputed. Under torch.distributed `compute` may be collective: rank 0 decides which
    parts exist and broadcasts it, so every rank computes the same chunks; only `write` ranks write.
    """
    parts = Path(parts)
    starts = list(range(0, n, size))
    done = _finished_parts(parts, starts, n, size) if write else {}
    done = _broadcast(done)
    rows: list[dict] = []
    for start in starts:
        stop = min(start + size, n)
        if start in done:
            rows.extend(done[start])
            continue
        chunk = compute(start, stop)
        if len(chunk) != stop - start:
            raise RuntimeError(f"chunk {start}:{stop} produced {len(chunk)} rows")
        if write:
            write_jsonl(parts / f"{start:09d}.jsonl", chunk)
        rows.extend(chunk)
    return rows


def _finished_parts(parts: Path, starts: list[int], n: int, size: int) -> dict[int, list[dict]]:
    done = {}
    for start in starts:
        path = parts / f"{start:09d}.jsonl"
        if not path.exists():
            continue
        try:
            chunk = read_jsonl(path)
        except UserError:
            continue
        if len(chunk) == min(start + size, n) - start:
            done[start] = chunk
    return done


def _broadcast(obj: Any) -> Any:
    """Rank 0's object on every rank (itself outside torch.distributed)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return obj
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
