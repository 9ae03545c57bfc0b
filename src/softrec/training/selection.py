"""Once per epoch: validation, the best epoch's weights, history.json and early stopping.

`EpochEndCallback` runs the injected validator ((model, tokenizer) -> metrics; the evaluation layer
provides it, `softrec.evaluation.validation.validator`), keeps the BEST epoch's weights by
`selection_key` (the same order picks the best alpha of a sweep), writes RUN_DIR/history.json and
stops after `patience` epochs without gain. The curriculum's epoch-end event runs before it, so the
epoch's history row carries lambda and the probe distance d_k.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import ExportableState

from softrec.hardware import peak_memory_gib
from softrec.runs import atomic_write_json
from softrec.training.soft_trainer import SoftTrainer, new_stats, reduce_stats

log = logging.getLogger(__name__)

Validator = Callable[[Any, Any], dict[str, float]]  # (model, tokenizer) -> validation metrics


class EpochEndCallback(TrainerCallback, ExportableState):
    """Validation, best-epoch weights, history.json and early stopping, once per epoch."""

    def __init__(
        self,
        out: Path,
        validator: Validator | None,
        save_weights: Callable[[Any, Any], None],
        *,
        patience: int,
        metric: str = "HR@10",
        checkpoint_every: int = 1,
        tie_break: bool = False,
    ):
        self.out = Path(out)
        self.validator = validator
        self.save_weights = save_weights
        self.patience = patience
        self.metric = metric
        self.checkpoint_every = checkpoint_every
        self.tie_break = tie_break
        self.trainer: SoftTrainer | None = None
        # state saved with every checkpoint
        self.history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.epoch_started: float | None = None

    def bind(self, trainer: SoftTrainer) -> None:
        self.trainer = trainer

    # ExportableState
    def state(self) -> dict[str, Any]:
        trainer = self.trainer
        return {
            "args": {},
            "attributes": {
                "history": self.history,
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early,
                "epoch_stats": dict(trainer.epoch_stats) if trainer else new_stats(),
            },
        }

    def load_state(self, attributes: dict[str, Any]) -> None:
        for name in ("history", "best_metric", "best_epoch", "bad_epochs", "stopped_early"):
            if name in attributes:
                setattr(self, name, attributes[name])
        if self.trainer is not None:
            self.trainer.epoch_stats = {**new_stats(), **(attributes.get("epoch_stats") or {})}

    # events
    def on_epoch_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self.epoch_started = time.monotonic()

    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        at_epoch_end = _epoch_fraction(state) < 1e-6
        # The epoch-end checkpoint is written after validation (on_epoch_end), so a checkpoint at an
        # epoch boundary always includes that epoch's history; mid-epoch ones every N steps.
        control.should_save = bool(
            not at_epoch_end and self.checkpoint_every and state.global_step % self.checkpoint_every == 0
        )
        return control

    def on_epoch_end(self, args, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        trainer = self.trainer
        assert trainer is not None, "EpochEndCallback.bind(trainer) was not called"
        epoch = int(round(state.epoch or 0))
        stats = reduce_stats(trainer.epoch_stats)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": state.global_step,
            "train_loss": stats["loss"] / stats["n"] if stats["n"] else None,
            "lambda": trainer.soft_lambda,  # the curriculum's value for this epoch
            "train_seconds": round(time.monotonic() - self.epoch_started, 2) if self.epoch_started else None,
        }
        for name in ("real", "distilled"):
            if stats[f"n_{name}"]:
                record[f"loss_{name}"] = stats[name] / stats[f"n_{name}"]
        if trainer.curriculum is not None:  # its epoch-end event ran before this one: d_k is measured
            record.update(trainer.curriculum.record(epoch))
        improved = self._validate(trainer, record)
        if improved:
            self.best_epoch, self.bad_epochs = epoch, 0
            if state.is_world_process_zero:
                self.save_weights(trainer.model, trainer.processing_class)
        else:
            self.bad_epochs += 1
        record["best"] = improved
        record["peak_memory_gib"] = peak_memory_gib()  # after validation: its decoding counts too
        self.history.append(record)
        if state.is_world_process_zero:
            atomic_write_json(self.out / "history.json", self.history)
        if self.validator is not None and self.bad_epochs >= self.patience:
            log.warning("early stopping after epoch %d: no %s gain for %d epochs", epoch, self.metric, self.bad_epochs)
            self.stopped_early = True
            control.should_training_stop = True
        trainer.epoch_stats = new_stats()
        trainer.reset_throughput()  # tokens/s must not count validation time
        control.should_save = True
        return control

    def _validate(self, trainer: SoftTrainer, record: dict[str, Any]) -> bool:
        """Run the validator; True when this epoch is the best so far (always, without validator)."""
        if self.validator is None:
            return True
        started = time.monotonic()
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            metrics = self.validator(model, trainer.processing_class)
        finally:
            model.train(was_training)
        record["valid"] = {k: float(v) for k, v in metrics.items()}
        record["valid_seconds"] = round(time.monotonic() - started, 2)
        value = metrics.get(self.metric)
        if value is None:
            raise KeyError(f"the validator returned no '{self.metric}' (got {sorted(metrics)})")
        best = next((e["valid"] for e in self.history if e.get("epoch") == self.best_epoch and "valid" in e), None)
        if best is None or selection_key(metrics, self.metric, self.tie_break) > selection_key(
                best, self.metric, self.tie_break):
            self.best_metric = float(value)
            return True
        return False


def selection_key(metrics: dict[str, float], metric: str, tie_break: bool = False) -> tuple[float, ...]:
    """Order of validation results; an epoch is a gain only when its key is strictly greater.

    Reference (train.py lines 256-264): the selection metric alone, so a tie is no gain (patience
    grows, the earlier epoch stays). `tie_break` (config.train.selection_tie_break) adds NDCG at the
    same cut-off, then validity: small validation sets tie often on HR@K (every epoch at 1/128, say),
    and the tie-breakers prefer the epoch that ranks the hits higher and generates more real titles."""
    if not tie_break:
        return (float(metrics[metric]),)
    cutoff = metric.split("@", 1)[1] if "@" in metric else "10"
    return (float(metrics[metric]), float(metrics.get(f"NDCG@{cutoff}", 0.0)), float(metrics.get("validity", 0.0)))


def _epoch_fraction(state: TrainerState) -> float:
    epoch = state.epoch or 0.0
    return abs(epoch - round(epoch))
