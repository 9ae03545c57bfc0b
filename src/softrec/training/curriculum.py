"""SOFT's curriculum: how much weight the self-distilled targets get in each epoch.

The loss of epoch t is  (1 - lambda_t) * CE(x -> y) + lambda_t * CE(x -> y'),  y the real target and
y' the SFT model's own generation (the paper's method section; reference trainer/soft_trainer.py and trainer/soft_trainer_utils.py). Schedulers, selectable by name:

- ``adaptive`` (the reference):  lambda_t = min(exp(alpha * (d_{t-1} / d_0 - 1)), 1), where d_k is
  the mean L2 distance, on a fixed probe set, between the grounding embedding of the model's top-beam
  generation after epoch k and that of the true title; d_0 is measured on the untuned model, so
  lambda_1 = 1. As generations approach the targets (d falls), lambda decays toward 0.
- ``sd-only``: lambda = 1 throughout (the paper's "w/o SA" ablation).
- ``fixed``: a constant lambda.
- ``linear``: 1 at epoch 1 down to 0 at the last epoch.

`Curriculum` owns lambda: the trainer reads `curriculum.lam` (the collator, to lay a batch out, and
the loss, to mix the two targets), and the Trainer's events drive it: it computes lambda at each epoch
start and measures d_k at each epoch end. Its state (distances and lambdas, keyed by
epoch so a repeated epoch overwrites rather than appends, and the probe's sample ids) lives in
RUN_DIR/curriculum.json, so a resumed run keeps the distance history. d_0 depends on nothing a sweep
varies, so it is measured once and read from the cache after (`_cached_untuned`; curriculum.json's
`d0_reused_from` names the file).

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

from softrec.methods import PROBED_SCHEDULERS, method, scheduler_name
from softrec.runs import atomic_write_json


def _adaptive(scheduler: Scheduler, epoch: int, distances: dict[int, float]) -> float:
    return adaptive_lambda(distances[0], distances[epoch - 1], scheduler.alpha)


def _linear(scheduler: Scheduler, epoch: int, distances: dict[int, float]) -> float:
    if scheduler.total_epochs <= 1:
        return 1.0
    return max(0.0, 1.0 - (epoch - 1) / (scheduler.total_epochs - 1))


# scheduler name (softrec.methods.SCHEDULERS) -> lambda for epoch t (1-based) given d_0 .. d_{t-1}
SCHEDULES: dict[str, Callable[[Scheduler, int, dict[int, float]], float]] = {
    "adaptive": _adaptive,
    "sd-only": lambda scheduler, epoch, distances: 1.0,
    "fixed": lambda scheduler, epoch, distances: scheduler.fixed_lambda,
    "linear": _linear,
}


@dataclass(frozen=True)
class Scheduler:
    """lambda for epoch t (1-based) given the distances measured so far (d_0 .. d_{t-1})."""

    name: str
    alpha: float = 1.0
    fixed_lambda: float = 0.5
    total_epochs: int = 1

    @property
    def needs_distances(self) -> bool:
        return self.name in PROBED_SCHEDULERS

    def __call__(self, epoch: int, distances: dict[int, float]) -> float:
        if epoch < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        schedule = SCHEDULES.get(self.name)
        if schedule is None:
            raise ValueError(f"unknown scheduler '{self.name}': expected {', '.join(SCHEDULES)}")
        return float(schedule(self, epoch, distances))

    def first(self) -> float:
        """lambda_1, before any distance is measured: d_0 / d_0 = 1 makes the adaptive one 1."""
        return 1.0 if self.needs_distances else self(1, {})


def adaptive_lambda(d0: float, d_prev: float, alpha: float) -> float:
    """The reference formula, clipped at 1 (a distance that grew keeps lambda at 1)."""
    if d0 <= 0:
        return 0.0  # the untuned model already generates the targets: nothing to ease into
    exponent = alpha * (d_prev / d0 - 1.0)
    return 1.0 if exponent >= 0 else math.exp(exponent)


def scheduler_for(method_name: str, soft_config: Any, epochs: int) -> Scheduler:
    name = scheduler_name(method_name, soft_config.scheduler)
    return Scheduler(name, soft_config.alpha, soft_config.fixed_lambda, epochs)


def _completed_epochs(state: Any) -> int:
    """Whole epochs done; state.epoch is fractional when resuming mid-epoch (1.5 -> 1)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


Measure = Callable[[Any, Any], float]  # (model, tokenizer) -> mean probe distance


class Curriculum(TrainerCallback):
    """The one owner of SOFT's lambda. The trainer reads `lam` (this epoch's value); the Trainer's
    events drive it: each epoch start computes lambda from the distances so far, each epoch end (and
    the start of training: d_0) measures the probe distance when the scheduler needs it."""

    def __init__(self, scheduler: Scheduler, measure: Measure | None = None, state_path: str | Path | None = None):
        if scheduler.needs_distances and measure is None:
            raise ValueError("the adaptive scheduler needs a distance measure")
        self.scheduler = scheduler
        self.measure = measure
        self.probe_ids: list[str] | None = getattr(measure, "probe_ids", None)
        self.state_path = Path(state_path) if state_path is not None else None
        self.epoch = 0  # the epoch in progress (0: training has not started)
        self.distances: dict[int, float] = {}
        self.lambdas: dict[int, float] = {}
        self.d0_reused_from: str | None = None

    @property
    def lam(self) -> float:
        """lambda of the epoch in progress (lambda_1 before the first epoch starts)."""
        return self.lambdas.get(self.epoch, self.scheduler.first())

    def record(self, epoch: int) -> dict[str, Any]:
        """What the epoch's history row says about the curriculum."""
        return {"lambda": self.lambdas.get(epoch), "distance": self.distances.get(epoch)}

    def history(self) -> dict[str, Any]:
        return {"distances": dict(sorted(self.distances.items())), "lambdas": dict(sorted(self.lambdas.items()))}

    # state: RUN_DIR/curriculum.json
    def _load(self) -> None:
        path = self.state_path
        saved = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else {}
        self.distances = {int(k): v for k, v in saved.get("distances", {}).items()}
        self.lambdas = {int(k): v for k, v in saved.get("lambdas", {}).items()}
        self.d0_reused_from = saved.get("d0_reused_from")  # a resumed run does not measure d_0 again

    def _save(self) -> None:
        if self.state_path is None:
            return
        state: dict[str, Any] = {"scheduler": self.scheduler.name, "alpha": self.scheduler.alpha,
                                 "distances": self.distances, "lambdas": self.lambdas}
        if self.probe_ids is not None:
            state["probe"] = self.probe_ids
        if reused := getattr(getattr(self.measure, "untuned", None), "reused_from", None) or self.d0_reused_from:
            state["d0_reused_from"] = reused
        atomic_write_json(self.state_path, state)

    def _measure(self, model: Any, tokenizer: Any, epoch: int) -> None:
        # d_0 through the measure's cache of untuned distances, where it has one
        measure = getattr(self.measure, "untuned", self.measure) if epoch == 0 else self.measure
        was_training = model.training
        model.eval()
        try:
            self.distances[epoch] = float(measure(model, tokenizer))
        finally:
            model.train(was_training)
        self._save()

    # Trainer events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        # A resumed run (Trainer restored global_step > 0) continues the saved history; a fresh run
        # starts a new one, whatever an earlier attempt left in curriculum.json.
        if state.global_step > 0:
            self._load()
        else:
            self.distances, self.lambdas, self.d0_reused_from = {}, {}, None
        # d_0: the untuned model. A fresh LoRA (B initialised to 0) computes exactly the base model.
        if self.scheduler.needs_distances and 0 not in self.distances:
            self._measure(model, processing_class, 0)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = _completed_epochs(state) + 1
        self.lambdas[self.epoch] = self.scheduler(self.epoch, self.distances)
        self._save()

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.scheduler.needs_distances:
            self._measure(model, processing_class, _completed_epochs(state))


# ---------------------------------------------------------------- wiring for `softrec train --method soft*`
def probe_samples(training: Sequence[Any], size: int, seed: int) -> list[Any]:
    """The fixed probe set S: `size` of the samples the run TRAINS on (`training`, e.g.
    `subsets.training_samples(dataset, config)`), drawn with a fixed seed; all of them when fewer."""
    import random

    training = list(training)
    if size >= len(training):
        return training
    return random.Random(seed).sample(training, size)


def probe_distance(dataset: Any, config: Any) -> Measure:
    """d_k: mean L2 distance between the grounding embeddings (frozen base model, as the reference's encode.py and evaluate_batch.py)
    of the model's top-beam generation (read by `eval.response_rule`) and of the true title, over
    the probe set. The returned callable carries the probe's sample ids as `.probe_ids`."""
    import torch

    from softrec.data.prompts import sample_prompt, strip_response
    from softrec.data.subsets import training_samples
    from softrec.inference.generate import generate_beams
    from softrec.inference.grounding import embed_texts

    probe = probe_samples(training_samples(dataset, config), config.soft.probe_size, config.soft.probe_seed)
    titles = dataset.titles
    targets = [titles[s.target] for s in probe]
    cache: dict[str, torch.Tensor] = {}

    def measure(model: Any, tokenizer: Any) -> float:
        prompts = [sample_prompt(dataset, s, config.model.template, tokenizer) for s in probe]
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
    measure.untuned = _cached_untuned(measure, dataset, config)  # type: ignore[attr-defined]
    return measure


D0_VERSION = "probe-d0-v1"  # bump when the probe distance's recipe changes: cached d_0 values go stale


def _cached_untuned(measure: Measure, dataset: Any, config: Any) -> Measure:
    """`measure` for d_0, kept on disk (cache_dir()/probe-d0/) under everything it depends on: the base
    weights and tokenizer (`model_fingerprint`), the data, prompt template, probe, decoding settings and
    the dtype they resolve to here, the response rule, the embedding recipe and the seed (a LLaRA
    projector is initialised from it). Every run of an alpha sweep (and the study rows) measures the
    same d_0 on the untuned model: minutes of decoding each on a CPU. `.reused_from` names the file a
    reused value came from."""
    from softrec.inference.generate import decode_dtype
    from softrec.inference.grounding import EMBEDDING_VERSION, model_fingerprint
    from softrec.paths import cache_dir
    from softrec.runs import content_key

    def untuned(model: Any, tokenizer: Any) -> float:
        soft = config.soft
        key = content_key(D0_VERSION, model_fingerprint(model, tokenizer), dataset.checksum, config.model.template,
                          measure.probe_ids, soft.distill_beams, soft.distill_max_new_tokens, config.eval.batch_size,
                          str(decode_dtype(config.eval.dtype, model.device)), config.eval.response_rule,
                          EMBEDDING_VERSION, config.train.seed)
        path = cache_dir() / "probe-d0" / f"{key}.json"
        try:
            untuned.reused_from = str(path)
            return float(json.loads(path.read_text(encoding="utf-8"))["d0"])
        except (OSError, ValueError, KeyError, TypeError):
            untuned.reused_from = None
        value = float(measure(model, tokenizer))
        atomic_write_json(path, {"d0": value, "probe_size": len(measure.probe_ids)})
        return value

    untuned.reused_from = None  # type: ignore[attr-defined]
    return untuned


def curriculum_for(config: Any, dataset: Any, out: str | Path) -> Curriculum | None:
    """The curriculum of config.train.method (None for a method without self-distilled targets),
    its state in OUT/curriculum.json."""
    if not method(config.train.method).distilled:
        return None
    scheduler = scheduler_for(config.train.method, config.soft, config.train.epochs)
    measure = probe_distance(dataset, config) if scheduler.needs_distances else None
    return Curriculum(scheduler, measure, Path(out) / "curriculum.json")
