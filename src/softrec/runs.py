"""Run directories: atomic writes, a lock against two writers, and a manifest of artefacts.

Every artefact is written to a temporary sibling and renamed into place, so a crash leaves either
the old artefact or none, never half of one. Each artefact is recorded in `manifest.json` with a
key (a hash of whatever it was computed from) and a checksum of its bytes; `RunDir.valid(...)`
says whether an artefact can be reused: it exists, its key matches and its bytes are intact.

Ownership: every directory a command creates holds a `.softrec` marker naming its kind (run,
dataset, report, pipeline). A command refuses an `--out` that is not empty and has no marker of its
kind (`claim_dir`), so it never writes over, or deletes, files it did not make. Files and
directories are created with the permissions the umask allows (not mkstemp's 0600/0700).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import platform
import re
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
MARKER = ".softrec"
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


# ---------------------------------------------------------------- ownership
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
    UserError naming the directory instead of corrupting it. Entering claims the directory
    (`claim_dir`: a foreign non-empty directory is refused untouched), removes what killed atomic
    writes left behind, and refuses symbolic links that lead out of it.
    """

    KIND = "run"
    LEGACY = ("run.json", MANIFEST)  # what a run made before the .softrec marker existed holds

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    # locking ------------------------------------------------------------
    def __enter__(self) -> RunDir:
        claim_dir(self.path, self.KIND, legacy=self.LEGACY)
        self._lock = acquire_lock(
            self.path / LOCK,
            f"{self.path}: another softrec process is using this run directory; "
            "wait for it to finish or choose another --out",
        )
        try:
            self.check_links()
            clean_leftovers(self.path, recursive=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_links(self) -> None:
        """UserError for a symbolic link inside the run directory that leads out of it: softrec
        would otherwise write (and replace files) wherever it points."""
        root = self.path.resolve()
        for folder, dirs, files in os.walk(self.path):
            for name in [*dirs, *files]:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                    raise UserError(f"{entry}: a symbolic link out of the run directory; softrec writes "
                                    "only inside it (replace the link with a real file or directory)")

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
        """Register artefact `name` (a path relative to the run dir) as built from `key`. Pass
        `inputs={...}` with the keys of what it was computed from (weights, dataset, decoding)."""
        self.record_many({name: info}, key)

    def record_many(self, entries: dict[str, dict[str, Any]], key: str) -> None:
        """Register several artefacts built from one `key` in one manifest write, so a kill never
        leaves some of them recorded from one computation and the rest from another."""
        manifest = self.manifest()
        for name, info in entries.items():
            target = self.path / name
            if not target.resolve().is_relative_to(self.path.resolve()):
                raise UserError(f"{target}: leads out of the run directory {self.path}; not recorded")
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

    # weights ------------------------------------------------------------
    WEIGHTS = ("adapter", "model", "classic.safetensors")

    def weights_sha(self) -> str | None:
        """Checksum of the run's trained weights as they are now (adapter/, model/ or the classic
        recommender's file); None when it has none. Artefacts computed from the weights record it
        under inputs.weights, and readers compare the two."""
        for name in self.WEIGHTS:
            if (self.path / name).exists():
                return path_sha256(self.path / name)
        return None

    def record_inputs(self, name: str) -> dict[str, Any]:
        entry = self.manifest()["artefacts"].get(name) or {}
        return entry.get("inputs") or {}

    def check_inputs(self, name: str, rebuild: str, *, weights: str | None = None) -> None:
        """UserError when artefact `name` was computed from weights other than the run's current
        ones (the run was retrained since): a stale result is never used. `weights` overrides the
        current checksum (when the caller has it already)."""
        recorded = self.record_inputs(name).get("weights")
        if recorded is None:
            return
        current = weights if weights is not None else self.weights_sha()
        if recorded != current:
            raise UserError(f"{self.path / name}: computed from other weights than the run's current ones "
                            f"(retrained since?); {rebuild}")

    def invalidate(self, name: str) -> None:
        manifest = self.manifest()
        if manifest["artefacts"].pop(name, None) is not None:
            atomic_write_json(self.path / MANIFEST, manifest)

    def save_config(self, config: Any, inputs: dict[str, str] | None = None) -> None:
        """Save the resolved config with environment and input checksums (`config.yaml`, `run.json`)."""
        text = config.to_yaml() if hasattr(config, "to_yaml") else str(config)
        atomic_write_text(self.path / "config.yaml", text)
        info = self.info()
        info.update({"environment": environment(), "inputs": inputs or {}})
        atomic_write_json(self.path / "run.json", info)

    def update_info(self, **fields: Any) -> None:
        info = self.info()
        info.update(fields)
        atomic_write_json(self.path / "run.json", info)

    def info(self) -> dict[str, Any]:
        info_path = self.path / "run.json"
        if not info_path.exists():
            return {}
        return read_json_object(info_path, "restore it, or retrain into a new --out")

    def require(self, name: str, rebuild: str) -> None:
        """Strict `check` for readers of a run that records its artefacts (run.json has a
        `train_key`): `name` must exist, be recorded in the manifest and be intact. A deleted
        manifest.json does not switch the checks off; it makes every recorded artefact unusable."""
        target = self.path / name
        if not target.exists():
            raise UserError(f"{target}: missing; {rebuild}")
        if not (self.path / MANIFEST).is_file():
            raise UserError(f"{self.path / MANIFEST}: missing, so {target} cannot be checked; {rebuild}")
        if self.manifest()["artefacts"].get(name) is None:
            raise UserError(f"{target}: not recorded in {self.path / MANIFEST} (left by an unfinished or "
                            f"other run); {rebuild}")
        self.check(name, rebuild)


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
