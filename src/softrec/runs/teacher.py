"""Per-epoch weights of a training run, and teacher run directories made from them (issue #15).

A LoRA training keeps every epoch's adapter in RUN_DIR/epochs/epoch-N (the trainer's
`EpochWeightsCallback` writes them; `epoch_weights` names the folder). `teacher_run` turns one of
them, any peft adapter folder (a trainer checkpoint, say) or the run's own best weights into a run
directory of its own: adapter/ (or model/) is a copy, run.json is the SFT run's with the teacher's
provenance, so `softrec distill` writes its distilled.jsonl there and `softrec train --method soft
--distilled TEACHER_DIR` trains on it, without ever mixing another adapter's targets into the SFT run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.runs.files import atomic_write_json, atomic_write_text
from softrec.runs.ownership import atomic_dir
from softrec.runs.provenance import content_key, file_sha256
from softrec.runs.rundir import RunDir

EPOCHS = "epochs"
ADAPTER_CONFIG = "adapter_config.json"
# what a teacher needs of an adapter folder: peft's weights and config, LLaRA's item projector; a
# trainer checkpoint's optimizer, scheduler and RNG state stay behind
ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin", "llara.safetensors")
# the SFT run's selection summary describes its best weights, not the teacher's
_SFT_SUMMARY = ("status", "error", "best_epoch", "best_metric", "metric", "stopped_early", "global_step")
PROVENANCE = ("teacher_of", "teacher_epoch", "teacher_adapter")


def epoch_weights(epoch: int) -> str:
    """The run-relative name of epoch `epoch`'s kept weights (also their manifest entry)."""
    return f"{EPOCHS}/epoch-{epoch}"


def kept_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose weights RUN_DIR/epochs holds, in order."""
    folders = [p for p in (Path(run_dir) / EPOCHS).glob("epoch-*") if p.is_dir()]
    return sorted(int(n) for n in (p.name.removeprefix("epoch-") for p in folders) if n.isdigit())


def teacher_run(sft_run: str | Path, out: str | Path, *, epoch: int | None = None,
                adapter: str | Path | None = None) -> Path:
    """Make `out` a run directory whose weights are SFT_RUN's epoch `epoch`, the peft adapter folder
    `adapter`, or (neither given) SFT_RUN's own best weights; returns `out`. A rerun with the same
    source reuses what is there (nothing copied when the bytes match); an `out` holding another
    teacher, or a run that is no teacher, is refused."""
    if epoch is not None and adapter is not None:
        raise UserError("give --epoch N or --adapter DIR, not both")
    sft_run, out = Path(sft_run), Path(out)
    if out.resolve() == sft_run.resolve():
        raise UserError(f"--out {out}: is the SFT run itself; choose a new directory for the teacher")
    info = _sft_info(sft_run)
    source = _source(sft_run, info, epoch, None if adapter is None else Path(adapter))
    provenance = {"teacher_of": str(sft_run.resolve()), "teacher_epoch": epoch,
                  "teacher_adapter": None if adapter is None else str(Path(adapter).resolve())}
    _check_same_teacher(out, provenance)
    files = _weight_files(source)
    source_sha = content_key([(p.name, file_sha256(p)) for p in files])
    key = content_key(info.get("train_key"), source_sha)
    weights = "adapter" if (source / ADAPTER_CONFIG).is_file() else "model"
    with RunDir(out) as run:
        # the weights first, run.json (naming their key) last: a kill in between leaves a run that
        # check_run_weights refuses until the rerun finishes it
        if not run.valid(weights, key):
            with atomic_dir(out / weights) as tmp:
                for path in files:
                    shutil.copy2(path, tmp / path.name)
            run.record(weights, key, **{k: v for k, v in provenance.items() if v is not None})
        teacher = {k: v for k, v in info.items() if k not in _SFT_SUMMARY}
        teacher.update(provenance, train_key=key, teacher_sha256=source_sha)
        if run.info() != teacher:
            atomic_write_json(out / "run.json", teacher)
        _copy_config(sft_run, out)
    return out


def _copy_config(sft_run: Path, out: Path) -> None:
    """The SFT's config.yaml, so `softrec distill --run-dir TEACHER` decodes with the SFT's settings."""
    source, target = sft_run / "config.yaml", out / "config.yaml"
    if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
        atomic_write_text(target, source.read_text(encoding="utf-8"))


def _sft_info(sft_run: Path) -> dict[str, Any]:
    if not (sft_run / "run.json").is_file():
        raise UserError(f"{sft_run}: not a softrec run directory (no run.json); train an SFT run first")
    return RunDir(sft_run).info()


def _source(sft_run: Path, info: dict[str, Any], epoch: int | None, adapter: Path | None) -> Path:
    """The folder the teacher's weights are copied from, checked."""
    if adapter is not None:
        if not (adapter / ADAPTER_CONFIG).is_file():
            raise UserError(f"--adapter {adapter}: no {ADAPTER_CONFIG}; expected a peft adapter folder "
                            "(RUN_DIR/adapter, RUN_DIR/epochs/epoch-N or a trainer checkpoint)")
        if info.get("backbone") == "llara" and not (adapter / "llara.safetensors").is_file():
            raise UserError(f"--adapter {adapter}: no llara.safetensors (the LLaRA item projector); use "
                            f"--epoch N, whose folders carry it")
        return adapter
    if epoch is None:
        weights = sft_run / ("model" if (sft_run / "model").is_dir() else "adapter")
        RunDir(sft_run).check(weights.name, f"retrain {sft_run}")
        if not weights.is_dir():
            raise UserError(f"{sft_run}: no trained adapter/ or model/ to make a teacher of (train it first)")
        return weights
    return checked_epoch_weights(sft_run, epoch, f"that epoch cannot be a teacher; retrain {sft_run}")


def checked_epoch_weights(run_dir: Path, epoch: int, rebuild: str) -> Path:
    """RUN_DIR's weights after epoch `epoch`, refused (naming the epochs kept, or `rebuild` when the
    manifest does not vouch for them) when they are missing or not the ones the training wrote."""
    name = epoch_weights(epoch)
    if not (run_dir / name).is_dir():
        kept = ", ".join(map(str, kept_epochs(run_dir))) or (
            "none (train.keep_epoch_adapters or keep_epoch_models was off, or an older softrec trained it)")
        raise UserError(f"--epoch {epoch}: {run_dir / name} does not exist; epochs kept: {kept}")
    RunDir(run_dir).check(name, rebuild)
    return run_dir / name


def _weight_files(folder: Path) -> list[Path]:
    """An adapter's files a teacher needs, or every file of a saved whole model."""
    if (folder / ADAPTER_CONFIG).is_file():
        return [folder / name for name in ADAPTER_FILES if (folder / name).is_file()]
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.name == "config.json" for p in files):
        raise UserError(f"{folder}: neither a peft adapter ({ADAPTER_CONFIG}) nor a saved model (config.json)")
    return files


def _check_same_teacher(out: Path, provenance: dict[str, Any]) -> None:
    """UserError when `out` is a run directory that is not this teacher (another source, or a training)."""
    if not (out / "run.json").is_file():
        return
    info = RunDir(out).info()
    if "teacher_of" not in info:
        raise UserError(f"--out {out}: a training run, not a teacher directory; choose a new --out")
    theirs = {k: info.get(k) for k in PROVENANCE}
    if theirs != provenance:
        raise UserError(f"--out {out}: already the teacher {_describe(theirs)}, not {_describe(provenance)}; "
                        "choose another --out")


def _describe(provenance: dict[str, Any]) -> str:
    source = (f"epoch {provenance['teacher_epoch']}" if provenance.get("teacher_epoch") is not None
              else f"adapter {provenance['teacher_adapter']}" if provenance.get("teacher_adapter")
              else "best weights")
    return f"{source} of {provenance.get('teacher_of')}"
