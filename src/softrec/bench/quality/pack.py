"""`--pack FILE`: carry a resumable `bench quality` folder to another machine in one tar.gz.

A long run (hours per dataset on 2 CPU cores) spans sessions, and a session may land on another
machine: its folder is then gone. The pack holds what resuming needs: DIR/steps.json, the prepared
data, every finished row and every run's newest checkpoint (what `softrec train --resume` reads).
It leaves out the older checkpoints (kept 8 deep for a crash mid-save) and stores a file identical
to one already packed as a hard link to it: every checkpoint and kept epoch repeats the backbone's
33 MB tokenizer.json. Restore it with `tar xzf FILE -C DIR` on the same --out path (steps.json and
the runs' configs name it). tarfile writes the archive; the two rules above are all that is ours.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from softrec.errors import UserError

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _older_checkpoints(out: Path) -> set[Path]:
    """Every checkpoint folder that is not the newest of its run's checkpoints/ (left out of the pack)."""
    older = set()
    for folder in out.rglob("checkpoints"):
        steps = {int(m[1]): child for child in folder.iterdir() if (m := _CHECKPOINT.fullmatch(child.name))}
        older.update(child for step, child in steps.items() if step != max(steps))
    return older


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def pack(out: Path, target: Path) -> dict[str, Any]:
    """Write `target` (tar.gz) from `out`; returns the counts and sizes it packed."""
    if not (out / "steps.json").is_file():
        raise UserError(f"--pack: {out} has no steps.json (not a `softrec bench quality` folder)")
    target = target.resolve()
    older = _older_checkpoints(out)
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and p != target
                   and not any(parent in older for parent in p.parents))
    first_of: dict[tuple[int, str], str] = {}
    stored = linked = 0
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in files:
            name = path.relative_to(out).as_posix()
            key = (path.stat().st_size, _digest(path))
            if key in first_of:
                info = tar.gettarinfo(path, name)
                info.type, info.linkname, info.size = tarfile.LNKTYPE, first_of[key], 0
                tar.addfile(info)
                linked += 1
            else:
                tar.add(path, name, recursive=False)
                first_of[key] = name
                stored += 1
    os.replace(partial, target)
    return {"files": stored, "linked": linked, "checkpoints_left_out": len(older), "bytes": target.stat().st_size}
