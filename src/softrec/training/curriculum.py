"""SOFT's curriculum: how much weight the self-distilled targets get in each epoch.

The loss of epoch t is  (1 - lambda_t) * CE(x -> y) + lambda_t * CE(x -> y'),  y the real target and
y' the SFT model's own generation (SOFT.md section 6). Schedulers, selectable by name:

- ``adaptive`` (the reference):  lambda_t = min(exp(alpha * (d_{t-1} / d_0 - 1)), 1), where d_k is
  the mean L2 distance, on a fixed probe set, between the grounding embedding of the model's top-beam
  generation after epoch k and that of the true title; d_0 is measured on the untuned model, so
  lambda_1 = 1. As generations approach the targets (d falls), lambda decays toward 0.
- ``sd-only``: lambda = 1 throughout (the paper's "w/o SA" ablation).
- ``fixed``: a constant lambda.
- ``linear``: 1 at epoch 1 down to 0 at the last epoch.

`CurriculumCallback` applies a scheduler inside transformers' Trainer: it sets `trainer.soft_lambda`
at each epoch start and measures d_k at each epoch end. Its state (distances and lambdas, keyed by
epoch so a repeated epoch overwrites rather than appends, and the probe's sample ids) lives in
RUN_DIR/curriculum.json, so a resumed run keeps the distance history.

The probe S is drawn from the samples the run trains on (the `train.train_samples` subset, listed in
RUN_DIR/train_samples.json), as the reference draws it from its training file train_4096.json
(inference.py lines 35 and 59-60): a probe of unseen samples would barely move as the model fits its
training data, keeping lambda near 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from softrec.runs import atomic_write_json


@dataclass(frozen=True)
class Scheduler:
    """lambda for epoch t (1-based) given the distances measured so far (d_0 .. d_{t-1})."""

    name: str
    alpha: float = 1.0
    fixed_lambda: float = 0.5
    total_epochs: int = 1

    @property
    def needs_distances(self) -> bool:
        return self.name == "adaptive"

    def __call__(self, epoch: int, distances: dict[int, float]) -> float:
        if epoch < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        if self.name == "sd-only":
            return 1.0
        if self.name == "fixed":
            return self.fixed_lambda
        if self.name == "linear":
            if self.total_epochs <= 1:
                return 1.0
            return max(0.0, 1.0 - (epoch - 1) / (self.total_epochs - 1))
        if self.name == "adaptive":
            return adaptive_lambda(distances[0], distances[epoch - 1], self.alpha)
        raise ValueError(f"unknown scheduler '{self.name}': expected adaptive, sd-only, fixed or linear")


def adaptive_lambda(d0: float, d_prev: float, alpha: float) -> float:
    """The reference formula, clipped at 1 (a distance that grew keeps lambda at 1)."""
    if d0 <= 0:
        return 0.0  # the untuned model already generates the targets: nothing to ease into
    exponent = alpha * (d_prev / d0 - 1.0)
    return 1.0 if exponent >= 0 else math.exp(exponent)


METHOD_SCHEDULERS = {
    "soft": "adaptive",
    "soft-sd-only": "sd-only",
    "soft-fixed": "fixed",
    "soft-linear": "linear",
}


def scheduler_for(method: str, soft_config: Any, epochs: int) -> Scheduler:
    name = METHOD_SCHEDULERS.get(method, soft_config.scheduler)
    return Scheduler(name, soft_config.alpha, soft_config.fixed_lambda, epochs)


def _completed_epochs(state: Any) -> int:
    """Whole epochs done; state.epoch is fractional when resuming mid-epoch (1.5 -> 1)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


Measure = Callable[[Any, Any], float]  # (model, tokenizer) -> mean probe distance


class CurriculumCallback(TrainerCallback):
    """Sets `trainer.soft_lambda` per epoch; measures d_k on the probe set when the scheduler needs it."""

    def __init__(self, scheduler: Scheduler, measure: Measure | None, state_path: str | Path):
        if scheduler.needs_distances and measure is None:
            raise ValueError("the adaptive scheduler needs a distance measure")
        self.scheduler = scheduler
        self.measure = measure
        self.probe_ids: list[str] | None = getattr(measure, "probe_ids", None)
        self.state_path = Path(state_path)
        self.trainer: Any = None
        self.distances: dict[int, float] = {}
        self.lambdas: dict[int, float] = {}

    def _load(self) -> None:
        saved = json.loads(self.state_path.read_text(encoding="utf-8")) if self.state_path.exists() else {}
        self.distances = {int(k): v for k, v in saved.get("distances", {}).items()}
        self.lambdas = {int(k): v for k, v in saved.get("lambdas", {}).items()}

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer

    def _save(self) -> None:
        state: dict[str, Any] = {"scheduler": self.scheduler.name, "alpha": self.scheduler.alpha,
                                 "distances": self.distances, "lambdas": self.lambdas}
        if self.probe_ids is not None:
            state["probe"] = self.probe_ids
        atomic_write_json(self.state_path, state)

    def _measure(self, model: Any, epoch: int) -> None:
        tokenizer = getattr(self.trainer, "processing_class", None)
        was_training = model.training
        model.eval()
        try:
            self.distances[epoch] = float(self.measure(model, tokenizer))
        finally:
            model.train(was_training)
        self._save()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run (Trainer restored global_step > 0) continues the saved history; a fresh run
        # starts a new one, whatever an earlier attempt left in curriculum.json.
        if state.global_step > 0:
            self._load()
        else:
            self.distances, self.lambdas = {}, {}
        # d_0: the untuned model. A fresh LoRA (B initialised to 0) computes exactly the base model.
        if self.scheduler.needs_distances and 0 not in self.distances:
            self._measure(model, 0)

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = _completed_epochs(state) + 1
        value = self.scheduler(epoch, self.distances)
        self.lambdas[epoch] = value
        if self.trainer is not None:
            self.trainer.soft_lambda = value
        self._save()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = _completed_epochs(state)
        if self.scheduler.needs_distances:
            self._measure(model, epoch)
        record = getattr(self.trainer, "epoch_record", None)
        if isinstance(record, dict):
            record["lambda"] = self.lambdas.get(epoch)
            record["distance"] = self.distances.get(epoch)

    def history(self) -> dict[str, Any]:
        return {"distances": dict(sorted(self.distances.items())), "lambdas": dict(sorted(self.lambdas.items()))}


# ---------------------------------------------------------------- wiring for `softrec train --method soft*`
def probe_samples(training: Sequence[Any], size: int, seed: int) -> list[Any]:
    """The fixed probe set S: `size` of the samples the run TRAINS on (`training`, e.g.
    `distill.training_samples(dataset, config)`), drawn with a fixed seed; all of them when fewer."""
    import random

    training = list(training)
    if size >= len(training):
        return training
    return random.Random(seed).sample(training, size)


def probe_distance(dataset: Any, config: Any) -> Measure:
    """d_k: mean L2 distance between the grounding embeddings (frozen base model, SOFT.md section 5)
    of the model's top-beam generation (read by `eval.response_rule`) and of the true title, over
    the probe set. The returned callable carries the probe's sample ids as `.probe_ids`."""
    import torch

    from softrec.data.prompts import build_prompt, strip_response
    from softrec.inference.generate import generate_beams
    from softrec.inference.grounding import embed_texts
    from softrec.training.distill import training_samples

    probe = probe_samples(training_samples(dataset, config), config.soft.probe_size, config.soft.probe_seed)
    titles = dataset.titles
    targets = [titles[s.target] for s in probe]
    cache: dict[str, torch.Tensor] = {}

    def measure(model: Any, tokenizer: Any) -> float:
        prompts = [
            build_prompt([titles[i] for i in s.history], dataset.domain, config.model.template, tokenizer,
                         item_ids=s.history)
            for s in probe
        ]
        beams = generate_beams(
            model, tokenizer, prompts,
            num_beams=config.soft.distill_beams,
            max_new_tokens=config.soft.distill_max_new_tokens,
            batch_size=config.eval.batch_size,
            dtype=config.eval.dtype,
        )
        generated = [strip_response(b[0], config.eval.response_rule) if b else "" for b in beams]
        if "targets" not in cache:
            cache["targets"] = embed_texts(model, tokenizer, targets)
        emb = embed_texts(model, tokenizer, generated)
        return float((emb - cache["targets"]).norm(dim=1).mean())

    measure.probe_ids = [s.sample_id for s in probe]  # type: ignore[attr-defined]
    return measure


def soft_callbacks(config: Any, dataset: Any, out: str | Path, distilled_run: Any = None) -> list[CurriculumCallback]:
    """The callbacks a SOFT run adds to the Trainer (call `.bind(trainer)` on each once it exists)."""
    scheduler = scheduler_for(config.train.method, config.soft, config.train.epochs)
    measure = probe_distance(dataset, config) if scheduler.needs_distances else None
    return [CurriculumCallback(scheduler, measure, Path(out) / "curriculum.json")]
