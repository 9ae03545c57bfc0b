"""Starting a SOFT run from a sibling run's first epoch (`softrec train --fork-from SIBLING`).

Every SOFT variant on one teacher's targets trains its first epoch at lambda = 1 (the adaptive
scheduler's lambda_1 = d_0 / d_0 = 1, sd-only's always 1): an alpha sweep and SOFT-sd-only repeat
the same epoch, bit for bit (#15: ~25 min a run on 2 CPU cores). A SOFT training therefore keeps the
whole trainer state at the end of its epoch 1 in RUN_DIR/fork-point/ (`ForkPointCallback`: the
sealed checkpoint with optimizer, scheduler, RNG and callback state, the best weights so far, the
curriculum's distances, the history and log lines); a sibling that differs only in alpha or in being
sd-only copies it in and resumes from there (`start_from_fork`), which is the resume path the crash
tests hold to the uninterrupted result. The fork key is the training key without what only sets
lambda after epoch 1 (method, scheduler, alpha, fixed lambda), and lambda_1 must agree: anything else
that differs (data, targets, seed, batch, epochs) refuses the fork.

No library serves this: transformers resumes a run from its own checkpoints only.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState

from softrec.errors import UserError
from softrec.runs import EPOCHS, RunDir, atomic_dir, atomic_write_json, epoch_weights

log = logging.getLogger(__name__)

FORK_POINT = "fork-point"
FORK_EPOCH = 1
_INFO = "fork.json"
# besides the checkpoint: what the run's files held at the end of epoch 1
_FILES = ("curriculum.json", "history.json", "logs/metrics.jsonl")
_DIRS = ("adapter", "model", epoch_weights(FORK_EPOCH))


def fork_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A config dump without what forking siblings may differ in: what sets lambda after epoch 1 (the
    method, the scheduler, alpha, the fixed lambda); `start_from_fork` checks that lambda_1 agrees."""
    settings = json.loads(json.dumps(settings))
    settings["train"].pop("method", None)
    for name in ("scheduler", "alpha", "fixed_lambda"):
        settings["soft"].pop(name, None)
    return settings


class ForkPointCallback(TrainerCallback):
    """After the epoch-1 checkpoint is written and sealed: RUN_DIR/fork-point/, written whole."""

    def __init__(self, out: Path, key: str, first_lambda: float):
        self.out, self.key, self.first_lambda = Path(out), key, first_lambda

    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        if not state.is_world_process_zero or abs((state.epoch or 0.0) - FORK_EPOCH) > 1e-6:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        with atomic_dir(self.out / FORK_POINT) as tmp:
            shutil.copytree(checkpoint, tmp / checkpoint.name)
            _copy_run_state(self.out, tmp)
            atomic_write_json(tmp / _INFO, {"key": self.key, "step": state.global_step, "epoch": FORK_EPOCH,
                                            "lambda": self.first_lambda, "checkpoint": checkpoint.name})


def _copy_run_state(source: Path, target: Path) -> None:
    """The run files and folders a fork point holds besides the checkpoint, from `source` to `target`."""
    for name in _FILES:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    for name in _DIRS:
        if (source / name).is_dir():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)


def start_from_fork(sibling: Path, out: Path, key: str, first_lambda: float, needs_distances: bool) -> Path | None:
    """Copy SIBLING's fork point into OUT (a run directory cleared for a fresh start); returns the
    checkpoint to resume from, or None (and a warning) when SIBLING has no fork point. UserError when
    it has one from another training than this one's epoch 1."""
    point = sibling / FORK_POINT
    if not (point / _INFO).is_file():
        log.warning("--fork-from %s: no %s/ there (trained elsewhere, restored without weights or by an older "
                    "softrec); training from the start", sibling, FORK_POINT)
        return None
    info = json.loads((point / _INFO).read_text(encoding="utf-8"))
    curriculum = json.loads((point / "curriculum.json").read_text()) if (point / "curriculum.json").is_file() else {}
    reasons = [
        "other settings, data or targets than this run (only what sets lambda after epoch 1 may differ)" if info["key"] != key else "",
        f"its epoch 1 had lambda {info['lambda']}, this run's has {first_lambda}" if info["lambda"] != first_lambda else "",
        "it measured no probe distances (sd-only), which this run's scheduler needs"
        if needs_distances and not {"0", "1"} <= set(curriculum.get("distances", {})) else "",
    ]
    if reason := next((r for r in reasons if r), None):
        raise UserError(f"--fork-from {sibling}: its epoch {FORK_EPOCH} is not this run's: {reason}")
    _copy_run_state(point, out)
    checkpoint = out / "checkpoints" / info["checkpoint"]
    shutil.copytree(point / info["checkpoint"], checkpoint)
    run = RunDir(out)
    if (out / EPOCHS).is_dir():  # recorded as this run's epoch 1, as EpochWeightsCallback would have
        run.record(epoch_weights(FORK_EPOCH), str(run.info().get("train_key")), epoch=FORK_EPOCH)
    run.update_info(forked_from=str(sibling.resolve()), forked_at_epoch=FORK_EPOCH)
    log.warning("%s: epoch %d taken from %s (the same training up to there); resuming at step %d",
                out, FORK_EPOCH, sibling, info["step"])
    return checkpoint
