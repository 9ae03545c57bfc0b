"""A suite's finished runs without their weights: kept by `--save DIR` in DIR/carry/, written
back by `--restore DIR` on another machine so the suite goes on from there.

Why: a long suite spans sessions, a session may land on another machine, and only the repository
survives the move. `--pack` carries the whole folder, weights and checkpoints included (hundreds of
MB: for machines that share a disk); what a later SOFT run needs of its teacher is its distilled
targets (KBs), and what the table needs of a finished row is its metrics, predictions and
validation curve. Restoring an SFT teacher that way saves its 1-3 h of training on 2 CPU cores.

Kept of each run folder: every file but its weights (adapter/, model/, epochs/, checkpoints/,
fork-point/, *.safetensors), its TensorBoard logs/ and its predictions.jsonl files, which are taken from the
save's predictions/ when their bytes are there (gzipped; else kept here); *.jsonl gzipped. A run is
kept only when every planned step writing into it has finished. Classic rows are kept too (SASRec
took 7.5 min on ml-100k, and a `--report-only` rebuild from a restore must not drop their rows: it
did, before they were kept). DIR/carry/carry.json lists the runs, their predictions and their finished steps.

Restore writes back each kept run that OUT lacks (never over an existing folder), checks every
restored artefact against the run's manifest.json checksums, and merges its steps into
OUT/steps.json (marked `restored_from`). A restored run has no weights: a step that needs them (a
study teacher from SFT's epoch E, a new evaluation) stops with a UserError, and that run must be
trained again. The suite must be restored into the same --out path: the steps' commands name it.
No library serves this: it is a filter over softrec's own run folders.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from softrec.bench.quality.execution import StepLog
from softrec.bench.quality.planning import PlannedStep, canonical_command
from softrec.errors import UserError

CARRY = "carry"
INDEX = "carry.json"
_LEFT_OUT_DIRS = {"adapter", "model", "epochs", "checkpoints", "logs", "fork-point"}
_LEFT_OUT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}
PREDICTIONS = "predictions.jsonl"
RAN_ON = "ran_on.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kept(relative: Path) -> bool:
    return (not _LEFT_OUT_DIRS.intersection(relative.parts[:-1]) and relative.suffix not in _LEFT_OUT_SUFFIXES
            and relative.name != ".lock" and not relative.name.endswith(".tmp"))


def _run_of(step: PlannedStep, out: Path) -> Path | None:
    """The run folder OUT/<dataset>/<run> a step writes its output into (None: elsewhere, e.g. data/)."""
    try:
        parts = step.output.relative_to(out).parts
    except ValueError:
        return None
    return out / parts[0] / parts[1] if len(parts) > 2 and parts[0] == step.dataset else None


def _carried_runs(steps: list[PlannedStep], out: Path, log: StepLog) -> dict[Path, list[PlannedStep]]:
    """The run folders every planned step of which has finished, with those steps."""
    runs: dict[Path, list[PlannedStep]] = {}
    unfinished: set[Path] = set()
    for step in steps:
        if (run := _run_of(step, out)) is None or step.kind == "prepare":
            continue
        if log.finished(step):
            runs.setdefault(run, []).append(step)
        else:
            unfinished.add(run)
    return {run: done for run, done in runs.items() if run not in unfinished and (run / "run.json").is_file()}


def save_carry(steps: list[PlannedStep], out: Path, save: Path) -> dict[str, Any]:
    """Write SAVE/carry/ for OUT's finished runs (after SAVE/predictions/ is written); returns the index."""
    from softrec.runs import atomic_write_bytes, atomic_write_json

    saved = {_sha(gzip.decompress(p.read_bytes())): p.relative_to(save).as_posix()
             for p in sorted((save / "predictions").glob("*.jsonl.gz"))}
    log, index = StepLog(out), {"out": str(out), "runs": {}, "steps": {}}
    for run, done in sorted(_carried_runs(steps, out, log).items()):
        name = run.relative_to(out).as_posix()
        entry: dict[str, Any] = {"files": [], "predictions": {}}
        for path in sorted(p for p in run.rglob("*") if p.is_file() and not p.is_symlink()):
            relative = path.relative_to(run)
            if not _kept(relative):
                continue
            data = path.read_bytes()
            if relative.name == PREDICTIONS and (source := saved.get(_sha(data))):
                entry["predictions"][relative.as_posix()] = source
                continue
            target = save / CARRY / name / relative
            if relative.suffix == ".jsonl":  # mtime 0: the same file gives the same bytes, a re-save diffs clean
                data, target = gzip.compress(data, mtime=0), target.with_name(target.name + ".gz")
            atomic_write_bytes(target, data)
            entry["files"].append(relative.as_posix())
        _name_machines(save / CARRY / name, entry["files"], sorted({log.done[s.command].get("ran_on") or "not recorded"
                                                                     for s in done}))
        index["runs"][name] = entry
        index["steps"].update({s.command: {"output": s.output.relative_to(out).as_posix(), "step": log.done[s.command]}
                               for s in done})
    atomic_write_json(save / CARRY / INDEX, index)
    return index


def _name_machines(folder: Path, files: list[str], machines: list[str]) -> None:
    """RAN_ON in every carried folder that holds results: the machines the run's steps ran on (not
    restored: it describes the save, not the run)."""
    from softrec.runs import atomic_write_json

    for parent in sorted({Path(f).parent for f in files}):
        atomic_write_json(folder / parent / RAN_ON, {"ran_on": machines})


def restore(saved: Path, out: Path) -> list[str]:
    """Write back SAVED/carry/'s runs that OUT lacks and merge their steps into OUT/steps.json; returns
    the restored runs' names. Each run folder is written whole or not at all; UserError before anything
    is written for a save without carry/ or one made for another --out."""
    index_path = saved / CARRY / INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--restore {saved}: no {CARRY}/{INDEX} (save it with a softrec that writes carry/, "
                        "from the suite's --out)") from None
    except ValueError as exc:
        raise UserError(f"{index_path}: not valid JSON ({exc})") from None
    if index.get("out") != str(out):
        raise UserError(f"--restore {saved}: its runs were made in --out {index.get('out')}, not {out}; restore "
                        "into that path (the steps' commands and the runs' configs name it)")
    restored = [name for name, entry in index["runs"].items() if _restore_run(saved, out, name, entry)]
    log = StepLog(out)
    for recorded, carried in index["steps"].items():
        command = canonical_command(recorded)
        if command not in log.done and carried["output"].startswith(tuple(f"{name}/" for name in restored)):
            log.done[command] = {**carried["step"], "restored_from": str(saved)}
            log.recorded_as.setdefault(command, recorded)
    out.mkdir(parents=True, exist_ok=True)
    log.save()
    return restored


def _restore_run(saved: Path, out: Path, name: str, entry: dict[str, Any]) -> bool:
    from softrec.runs import RunDir, atomic_dir

    run = out / name
    if run.exists():
        return False
    with atomic_dir(run) as tmp:
        for relative in entry["files"]:
            source = saved / CARRY / name / relative
            data = (gzip.decompress((source.with_name(source.name + ".gz")).read_bytes())
                    if relative.endswith(".jsonl") else source.read_bytes())
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(data)
        for relative, source in entry["predictions"].items():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(gzip.decompress((saved / source).read_bytes()))
        restored = RunDir(tmp)
        for artefact in restored.manifest()["artefacts"]:
            if (tmp / artefact).is_file() and not restored.valid(artefact):
                raise UserError(f"--restore {saved}: {name}/{artefact} differs from its checksum in the run's "
                                "manifest.json (the save was edited or truncated); nothing restored for it")
    return True
