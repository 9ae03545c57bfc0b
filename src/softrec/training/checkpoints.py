"""What resume and the run directory rely on: sealed checkpoints, the log file, the best weights.

Trainer checkpoints (weights, optimizer, scheduler, RNG, callback state) go to RUN_DIR/checkpoints;
`CheckpointSealCallback` seals each with its files' checksums so `last_complete_checkpoint` skips a
damaged one. `JsonlLogCallback` appends every log line to RUN_DIR/logs/metrics.jsonl
(`truncate_jsonl` drops lines past the checkpoint a resume continues from). `weights_saver` writes
the best epoch's adapter (or full model) with what a user needs beside it (models/card.py);
`EpochWeightsCallback` keeps every epoch's weights in RUN_DIR/epochs/epoch-N, the teachers of the
"when does SOFT help" study (issue #15), which checkpoints/ (the last `save_total_limit`) loses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState

from softrec.runs import RunDir, atomic_dir, epoch_weights

log = logging.getLogger(__name__)


SEAL = "softrec-seal.json"


class CheckpointSealCallback(TrainerCallback):
    """After each checkpoint is written: the modes the umask allows (safetensors writes 0600), and
    a seal with every file's checksum, so a truncated or damaged checkpoint is recognised on
    resume and the previous one used instead (`last_complete_checkpoint`)."""

    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        if state.is_world_process_zero:
            from softrec.runs import apply_umask, atomic_write_json, file_sha256

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                apply_umask(folder)
                files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != SEAL}
                atomic_write_json(folder / SEAL, files)


class JsonlLogCallback(TrainerCallback):
    """Every Trainer log line (loss, lr, tokens/s, lambda, ...) appended to logs/metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            row = {"step": state.global_step, "time": round(time.time(), 3), **logs}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last) is present and readable and,
    where checkpoints are sealed (CheckpointSealCallback), whose files match their seal. A damaged
    newest checkpoint falls back to the one before it."""
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit():
            candidates.append((int(suffix), path))
    sealed = any((path / SEAL).is_file() for _, path in candidates)
    for _, path in sorted(candidates, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if sealed and not _seal_intact(path):
            log.warning("%s: damaged or unsealed checkpoint; trying the one before it", path)
            continue
        return path
    return None


def _seal_intact(path: Path) -> bool:
    from softrec.runs import file_sha256

    try:
        seal = json.loads((path / SEAL).read_text(encoding="utf-8"))
        return all(file_sha256(path / name) == digest for name, digest in seal.items())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def weights_saver(out: Path, lora: bool) -> Callable[[Any, Any], None]:
    def save(model: Any, tokenizer: Any) -> None:
        target = out / ("adapter" if lora else "model")
        with atomic_dir(target) as tmp:
            _save_weights(model, tokenizer, tmp, lora)
            from softrec.models.card import describe_adapter

            try:  # base identity, tokenizer, prompt template, model card: loadable without softrec
                describe_adapter(tmp, out, tokenizer)
            except Exception as exc:  # documentation only: never lose the trained weights over it
                log.warning("%s: could not write the model card (%s: %s)", out, type(exc).__name__, exc)

    return save


def _save_weights(model: Any, tokenizer: Any, folder: Path, lora: bool) -> None:
    """The adapter (or whole model, with the tokenizer load_run_model reads beside it) into `folder`."""
    model.save_pretrained(folder, safe_serialization=True)
    if not lora and tokenizer is not None:
        tokenizer.save_pretrained(folder)
    from softrec.models.llara import save_projector

    save_projector(model, folder)  # LLaRA backbone: its item projector beside the weights


class EpochWeightsCallback(TrainerCallback):
    """At every epoch end, on the main process: the weights alone (no optimizer state, no model card)
    into RUN_DIR/epochs/epoch-N, written whole (`atomic_dir`) and recorded in the manifest under run.json's
    train_key, so `softrec.runs.teacher_run` can check them. A resumed training that redoes an epoch
    replaces its folder; a fresh one starts without them (trainer._clear_previous_attempt)."""

    def __init__(self, out: Path, lora: bool):
        self.out = Path(out)
        self.lora = lora

    def on_epoch_end(self, args, state: TrainerState, control: TrainerControl, model=None, processing_class=None,
                     **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        epoch = int(round(state.epoch or 0))
        with atomic_dir(self.out / epoch_weights(epoch)) as tmp:
            _save_weights(model, processing_class, tmp, self.lora)
        run = RunDir(self.out)  # the training holds the run's lock: no other writer of the manifest
        run.record(epoch_weights(epoch), str(run.info().get("train_key")), epoch=epoch)
