"""Resumable chunked work: rows computed a chunk at a time, each finished chunk kept on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.runs.files import read_jsonl, write_jsonl


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
