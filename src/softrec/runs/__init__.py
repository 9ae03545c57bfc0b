"""Run directories: atomic writes, a lock against two writers, and a manifest of artefacts.

Every artefact is written to a temporary sibling and renamed into place, so a crash leaves either
the old artefact or none, never half of one. Each artefact is recorded in `manifest.json` with a
key (a hash of whatever it was computed from) and a checksum of its bytes; `RunDir.valid(...)`
says whether an artefact can be reused: it exists, its key matches and its bytes are intact.

Ownership: every directory a command creates holds a `.softrec` marker naming its kind (run,
dataset, report, pipeline). A command refuses an `--out` that is not empty and has no marker of its
kind (`claim_dir`), so it never writes over, or deletes, files it did not make. Files and
directories are created with the permissions the umask allows (not mkstemp's 0600/0700).

The parts, one concern each: `files` (atomic writes, JSON, permissions, OS errors), `ownership`
(markers, `claim_dir`, `atomic_dir`, locks), `provenance` (checksums, content keys, environment),
`rundir` (`RunDir` and its manifest), `chunks` (resumable chunked work), `teacher` (a training's
per-epoch weights, and teacher run directories made from them or any adapter). Import from
`softrec.runs`: every public name is here.
"""

from __future__ import annotations

from softrec.runs.chunks import resumable_chunks
from softrec.runs.files import (
    apply_umask,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_leftovers,
    current_umask,
    dir_mode,
    dumps_json,
    file_mode,
    os_error,
    probe_writable,
    read_json_object,
    read_jsonl,
    write_jsonl,
)
from softrec.runs.ownership import (
    LOCK,
    MARKER,
    acquire_lock,
    atomic_dir,
    check_replaceable,
    claim_dir,
    dir_lock,
    read_marker,
)
from softrec.runs.provenance import content_key, environment, file_sha256, git_commit, path_sha256
from softrec.runs.rundir import MANIFEST, RunDir
from softrec.runs.teacher import (
    EPOCHS,
    checked_epoch_weights,
    epoch_weights,
    kept_epochs,
    teacher_run,
)

__all__ = [
    "EPOCHS", "LOCK", "MANIFEST", "MARKER", "RunDir", "acquire_lock", "apply_umask", "atomic_dir",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_replaceable",
    "checked_epoch_weights", "claim_dir", "clean_leftovers", "content_key", "current_umask", "dir_lock", "dir_mode", "dumps_json", "environment",
    "epoch_weights", "file_mode", "file_sha256", "git_commit", "kept_epochs", "os_error", "path_sha256",
    "probe_writable", "read_json_object", "read_jsonl", "read_marker", "resumable_chunks", "teacher_run",
    "write_jsonl",
]
