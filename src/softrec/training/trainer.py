"""LLM training for SFT and SOFT: one transformers Trainer subclass, peft LoRA, epoch callbacks.

`train_llm` is the whole stage: it tokenizes the train split (`batches.py`), wraps the backbone in
LoRA (or trains it fully), and runs `SoftTrainer`, whose loss is

    (1 - soft_lambda) * CE(real target) + soft_lambda * CE(self-distilled target)

with both targets of the same inputs in ONE forward and the unused half skipped when lambda is 0 or 1
(`soft_lambda` = 0 is plain SFT). The LM head runs only at labelled positions (`loss.py`) and under
bf16 autocast where the CPU/GPU computes bf16 natively.

After every epoch `EpochEndCallback` runs the validator (default: `evaluate_model` on the valid
split, HR@10), keeps the BEST epoch's weights in RUN_DIR/adapter (or RUN_DIR/model), writes
RUN_DIR/history.json and stops early after `patience` epochs without gain. Callbacks passed in (the
SOFT curriculum) run before it at each epoch end and may add fields to `trainer.epoch_record`.

Resume: Trainer checkpoints (weights, optimizer, scheduler, RNG) go to RUN_DIR/checkpoints after
every `checkpoint_every` optimizer steps and at each epoch end. Callback state travels with them
through the Trainer's `ExportableState` mechanism; `SoftTrainer` restores it IN PLACE (the stock
Trainer re-instantiates callbacks, which loses their references and their order), so any callback
that is an `ExportableState` gets its `attributes` back, or its `load_state(attributes)` called.
Under torchrun / accelerate launch the Trainer does DDP; only rank 0 writes run files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from softrec.config import Config, TrainConfig, as_prepared
from softrec.data.dataset import PreparedDataset, Sample
from softrec.hardware import use_bf16
from softrec.runs import RunDir, atomic_dir, atomic_write_json, content_key
from softrec.training.batches import Collator, EncodedDataset, LengthGroupedSampler, encode_samples
from softrec.training.loss import autocast, lm_losses

log = logging.getLogger(__name__)

Validator = Callable[[Any, Any], dict[str, float]]
CHECKPOINTS = "checkpoints"
TRAIN_SAMPLES = "train_samples.json"  # the sample ids this run trains on, in dataset order


@dataclass
class TrainResult:
    out: Path
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_metric: float | None
    weights_dir: Path  # RUN_DIR/adapter (LoRA) or RUN_DIR/model (full fine-tuning)
    stopped_early: bool = False
    global_step: int = 0
    reused: bool = False  # True when a finished, valid training was found and nothing ran


def initial_lambda(config: Config) -> float:
    """soft_lambda before any curriculum callback sets it (epoch 1 of SOFT is distilled-only)."""
    method = config.train.method
    if method == "sft":
        return 0.0
    if method == "soft-fixed":
        return float(config.soft.fixed_lambda)
    return 1.0


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def accumulation_steps(train: TrainConfig, n_samples: int, world_size: int = 1) -> int:
    """effective_batch / (micro_batch * world_size), capped at one optimizer step per epoch."""
    per_pass = train.micro_batch * world_size
    wanted = max(1, train.effective_batch // per_pass)
    if wanted * per_pass != train.effective_batch:
        log.warning(
            "effective batch %d is not a multiple of micro_batch*world_size=%d: using %d",
            train.effective_batch, per_pass, wanted * per_pass,
        )
    passes_per_epoch = max(1, math.ceil(n_samples / per_pass))
    if wanted > passes_per_epoch:
        log.warning(
            "effective batch %d exceeds the %d training samples: accumulating %d micro-batches "
            "(one optimizer step per epoch over all samples)",
            train.effective_batch, n_samples, passes_per_epoch,
        )
        return passes_per_epoch
    return wanted


# ---------------------------------------------------------------- the Trainer
class SoftTrainer(Trainer):
    """Trainer whose loss mixes the real and the self-distilled target by `soft_lambda`."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        *args: Any,
        soft_lambda: float = 0.0,
        fast_loss: bool = True,
        bf16_autocast: bool = False,
        lengths: list[int] | None = None,
        group_by_length: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.soft_lambda = float(soft_lambda)
        self.fast_loss = fast_loss
        self.bf16_autocast = bf16_autocast
        self.lengths = lengths
        self.group_by_length = group_by_length
        self.epoch_record: dict[str, Any] = {}
        self.epoch_stats = _new_stats()
        self._window = _new_stats()  # since the last log line
        self._window_start = time.monotonic()
        if isinstance(self.data_collator, Collator):
            self.data_collator.lambda_fn = lambda: self.soft_lambda

    # loss -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lam = float(inputs.pop("soft_lambda", self.soft_lambda))
        n_tokens = int(inputs.pop("n_tokens", 0))
        keys = [k for k in ("targets", "targets_distilled") if inputs.get(k) is not None]
        losses = dict(zip(keys, lm_losses(model, inputs, keys, fast=self.fast_loss), strict=True))
        real, distilled = losses.get("targets"), losses.get("targets_distilled")
        if real is None:
            loss = distilled
        elif distilled is None:
            loss = real
        else:
            loss = (1.0 - lam) * real + lam * distilled
        for stats in (self.epoch_stats, self._window):
            _add(stats, loss, real, distilled, n_tokens)
        return (loss, None) if return_outputs else loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        return autocast(self.bf16_autocast, self.args.device.type)

    # sampling ---------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = self.lengths or [1] * len(dataset)
        # mega=1: random micro-batches (reference); otherwise micro-batches of similar lengths (less
        # padding, but run-on distilled targets cluster: config.train.group_by_length)
        mega = 16 if self.group_by_length else 1
        return LengthGroupedSampler(lengths, self.args.per_device_train_batch_size, self.args.seed, mega=mega)

    # logging ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            elapsed = max(time.monotonic() - self._window_start, 1e-9)
            logs["tokens_per_s"] = round(self._window["tokens"] / elapsed, 2)
            logs["soft_lambda"] = self.soft_lambda
            for name in ("real", "distilled"):
                if self._window[f"n_{name}"]:
                    logs[f"loss_{name}"] = round(self._window[name] / self._window[f"n_{name}"], 6)
            self.reset_throughput()
        super().log(logs, start_time)

    def reset_throughput(self) -> None:
        self._window = _new_stats()
        self._window_start = time.monotonic()

    # resume -----------------------------------------------------------------------------
    def _load_callback_state(self) -> None:
        """Restore every ExportableState callback in place (see module docstring)."""
        stored = self.state.stateful_callbacks or {}
        for callback in self.callback_handler.callbacks:
            data = stored.get(type(callback).__name__)
            if not isinstance(callback, ExportableState) or not data:
                continue
            attributes = (data[0] if isinstance(data, list) else data).get("attributes", {})
            if hasattr(callback, "load_state"):
                callback.load_state(attributes)
            else:
                for name, value in attributes.items():
                    setattr(callback, name, value)


def _new_stats() -> dict[str, float]:
    return {"loss": 0.0, "n": 0, "real": 0.0, "n_real": 0, "distilled": 0.0, "n_distilled": 0, "tokens": 0}


def _add(stats: dict[str, float], loss: Any, real: Any, distilled: Any, n_tokens: int) -> None:
    stats["loss"] += float(loss.detach())
    stats["n"] += 1
    stats["tokens"] += n_tokens
    if real is not None:
        stats["real"] += float(real.detach())
        stats["n_real"] += 1
    if distilled is not None:
        stats["distilled"] += float(distilled.detach())
        stats["n_distilled"] += 1


def _reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """Sum the per-rank statistics under DDP (every rank gets the totals)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(stats)
    keys = sorted(stats)
    tensor = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


# ---------------------------------------------------------------- callbacks
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
        self.epoch_lambda: float | None = None
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
                "epoch_lambda": self.epoch_lambda,
                "epoch_record": dict(trainer.epoch_record) if trainer else {},
                "epoch_stats": dict(trainer.epoch_stats) if trainer else _new_stats(),
                "soft_lambda": trainer.soft_lambda if trainer else None,
            },
        }

    def load_state(self, attributes: dict[str, Any]) -> None:
        for name in ("history", "best_metric", "best_epoch", "bad_epochs", "stopped_early", "epoch_lambda"):
            if name in attributes:
                setattr(self, name, attributes[name])
        if self.trainer is not None:
            self.trainer.epoch_record = dict(attributes.get("epoch_record") or {})
            self.trainer.epoch_stats = {**_new_stats(), **(attributes.get("epoch_stats") or {})}
            if attributes.get("soft_lambda") is not None:
                self.trainer.soft_lambda = float(attributes["soft_lambda"])

    # events
    def on_epoch_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        # curriculum callbacks ran before this one and set this epoch's lambda
        if self.trainer is not None and _epoch_fraction(state) < 1e-6:
            self.epoch_lambda = self.trainer.soft_lambda
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
        stats = _reduce_stats(trainer.epoch_stats)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": state.global_step,
            "train_loss": stats["loss"] / stats["n"] if stats["n"] else None,
            "lambda": self.epoch_lambda if self.epoch_lambda is not None else trainer.soft_lambda,
            "train_seconds": round(time.monotonic() - self.epoch_started, 2) if self.epoch_started else None,
        }
        for name in ("real", "distilled"):
            if stats[f"n_{name}"]:
                record[f"loss_{name}"] = stats[name] / stats[f"n_{name}"]
        record.update(trainer.epoch_record)  # curriculum fields (distance, lambda, ...)
        improved = self._validate(trainer, record)
        if improved:
            self.best_epoch, self.bad_epochs = epoch, 0
            if state.is_world_process_zero:
                self.save_weights(trainer.model, trainer.processing_class)
        else:
            self.bad_epochs += 1
        record["best"] = improved
        self.history.append(record)
        if state.is_world_process_zero:
            atomic_write_json(self.out / "history.json", self.history)
        if self.validator is not None and self.bad_epochs >= self.patience:
            log.warning("early stopping after epoch %d: no %s gain for %d epochs", epoch, self.metric, self.bad_epochs)
            self.stopped_early = True
            control.should_training_stop = True
        trainer.epoch_record, trainer.epoch_stats = {}, _new_stats()
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


# ---------------------------------------------------------------- checkpoints and weights
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


def _weights_saver(out: Path, lora: bool) -> Callable[[Any, Any], None]:
    def save(model: Any, tokenizer: Any) -> None:
        target = out / ("adapter" if lora else "model")
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if not lora and tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            from softrec.models.llara import save_projector

            save_projector(model, tmp)  # LLaRA backbone: its item projector beside the weights
            from softrec.models.card import describe_adapter

            try:  # base identity, tokenizer, prompt template, model card: loadable without softrec
                describe_adapter(tmp, out, tokenizer)
            except Exception as exc:  # documentation only: never lose the trained weights over it
                log.warning("%s: could not write the model card (%s: %s)", out, type(exc).__name__, exc)

    return save


def prepare_model(model: Any, config: Config) -> Any:
    """dtype, then LoRA (peft) or full fine-tuning, in train mode."""
    dtype = config.model.dtype
    if dtype not in ("auto", "float32"):
        model = model.to(getattr(torch, dtype))
    lora = config.train.lora
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        from softrec.models.llara import trainable_modules

        peft_config = LoraConfig(
            modules_to_save=trainable_modules(model),  # LLaRA: the item projector trains with LoRA
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_config)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    model.config.use_cache = False
    return model.train()


def training_key(config: Config, dataset: PreparedDataset, distilled: dict[str, str] | None) -> str:
    """What a finished training depends on: settings (bar data, which the dataset key covers),
    the prepared data and the self-distilled targets."""
    from softrec.data.prompts import prompt_fingerprint

    settings = config.model_dump(mode="json")
    settings.pop("data", None)
    settings["train"].pop("report_to", None)  # where logs go never changes the weights
    return content_key(settings, dataset.checksum, content_key(sorted((distilled or {}).items())),
                       prompt_fingerprint(config.model.template))


def subset(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    """A seeded subset of `size` samples in their original order (all of them when size is None)."""
    if size is None or size >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), size))
    return [samples[i] for i in keep]


def default_validator(config: Config, dataset: PreparedDataset) -> Validator:
    """evaluate_model on the valid split with config.eval (imported lazily: another stage)."""

    def validate(model: Any, tokenizer: Any) -> dict[str, float]:
        from softrec.evaluation.evaluate import evaluate_model

        samples = subset(dataset.split("valid"), config.train.valid_samples, config.data.seed)
        result = evaluate_model(
            model, tokenizer, dataset, samples, config.eval,
            template=config.model.template, base_model_name=config.model.name,
        )
        return result.metrics

    return validate


# ---------------------------------------------------------------- the stage
def build_trainer(
    config: Config,
    dataset: PreparedDataset,
    out: Path,
    *,
    distilled: dict[str, str] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    validator: Validator | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    progress: bool = True,
) -> tuple[SoftTrainer, EpochEndCallback]:
    """The SoftTrainer `train_llm` runs (model with LoRA, data, callbacks), ready for `.train()`."""
    from transformers import set_seed

    train_cfg = config.train
    set_seed(train_cfg.seed)
    model, tokenizer = model_and_tokenizer or _load_backbone(config.model.name)
    if config.model.backbone == "llara":
        from softrec.training.llara_items import attach_for_training

        model, tokenizer = attach_for_training(model, tokenizer, config, dataset, out)
    model = prepare_model(model, config)
    samples = subset(dataset.split("train"), train_cfg.train_samples, config.data.seed)
    encoded = encode_samples(
        samples, dataset, tokenizer,
        template=config.model.template, max_length=config.model.max_length, distilled=distilled,
    )
    train_set = EncodedDataset(encoded)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = accumulation_steps(train_cfg, len(train_set), world_size)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = use_bf16(train_cfg.bf16, device_type)
    log.warning(
        "training %s on %d samples: micro-batch %d x %d accumulation x %d processes, bf16 autocast %s",
        config.model.name, len(train_set), train_cfg.micro_batch, accumulation, world_size, "on" if bf16 else "off",
    )

    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=train_cfg.micro_batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=train_cfg.epochs,
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",  # EpochEndCallback decides when to checkpoint
        save_total_limit=train_cfg.save_total_limit,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        report_to="none",  # TensorBoard is added below with RUN_DIR/logs as its directory
        remove_unused_columns=False,
        label_names=["targets"],
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        restore_callback_states_from_checkpoint=True,
        ddp_find_unused_parameters=False,
        use_cpu=device_type == "cpu",  # accelerate runs multi-process CPU DDP (gloo) only when told so
    )
    epoch_cb = EpochEndCallback(
        out,
        validator if validator is not None else (default_validator(config, dataset) if train_cfg.validate_every_epoch else None),
        _weights_saver(out, train_cfg.lora.enabled),
        patience=train_cfg.patience,
        metric=train_cfg.selection_metric,
        checkpoint_every=train_cfg.checkpoint_every,
        tie_break=train_cfg.selection_tie_break,
    )
    all_callbacks: list[TrainerCallback] = [*(callbacks or []), epoch_cb, JsonlLogCallback(out / "logs" / "metrics.jsonl"),
                                            CheckpointSealCallback()]
    if args.process_index == 0:
        all_callbacks += _tracker_callbacks(train_cfg.report_to, out)
    trainer = SoftTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=Collator(_pad_id(tokenizer), model_config=_model_config(model)),
        callbacks=all_callbacks,
        soft_lambda=initial_lambda(config),
        fast_loss=train_cfg.logits_at_labels_only,
        bf16_autocast=bf16,
        lengths=[e.length for e in encoded],
        group_by_length=train_cfg.group_by_length,
        processing_class=tokenizer,  # validators and curriculum callbacks read it from the trainer
    )
    for callback in all_callbacks:
        if hasattr(callback, "bind"):
            callback.bind(trainer)
        elif not hasattr(callback, "trainer"):
            callback.trainer = trainer
    return trainer, epoch_cb


def _tracker_callbacks(report_to: list[str], out: Path) -> list[TrainerCallback]:
    """train.report_to -> transformers' callbacks: TensorBoard into RUN_DIR/logs, W&B and MLflow as
    they configure themselves (WANDB_PROJECT, MLFLOW_TRACKING_URI, ...), the run named after RUN_DIR."""
    from softrec.config import check_trackers

    check_trackers(report_to)
    callbacks: list[TrainerCallback] = []
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "logs"))))
    if "wandb" in report_to:
        from transformers.integrations import WandbCallback

        os.environ.setdefault("WANDB_NAME", out.name)
        os.environ.setdefault("WANDB_DIR", str(out / "logs"))
        callbacks.append(WandbCallback())
    if "mlflow" in report_to:
        from transformers.integrations import MLFlowCallback

        os.environ.setdefault("MLFLOW_RUN_NAME", out.name)
        callbacks.append(MLFlowCallback())
    return callbacks


def train_llm(
    config: Config,
    dataset: PreparedDataset,
    out: Path,
    *,
    resume: bool = False,
    distilled: dict[str, str] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    validator: Validator | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train config.model.name on dataset's train split into RUN_DIR `out` (see module docstring).

    `validator=None` uses `default_validator` unless config.train.validate_every_epoch is false (then
    the last epoch is kept). `model_and_tokenizer` overrides loading config.model.name (tests);
    `info` adds fields to run.json. The run directory is locked (by rank 0) while training.
    """
    lock = RunDir(out) if is_main_process() else contextlib.nullcontext()
    with lock:
        try:
            return _train_llm(
                config, dataset, Path(out), resume=resume, distilled=distilled, callbacks=callbacks,
                validator=validator, model_and_tokenizer=model_and_tokenizer, progress=progress, info=info,
            )
        except BaseException as exc:
            _mark_stopped(Path(out), exc)
            raise


def _mark_stopped(out: Path, exc: BaseException) -> None:
    """run.json never stays at "training" after the process stopped on an error: "interrupted"
    (Ctrl-C; --resume continues it) or "failed" with the error. A SIGKILL leaves "training"."""
    if not is_main_process():
        return
    with contextlib.suppress(Exception):
        run = RunDir(out)
        if run.info().get("status") == "training":
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.update_info(status=status, error=f"{type(exc).__name__}: {exc}"[:500])


def _train_llm(
    config: Config,
    dataset: PreparedDataset,
    out: Path,
    *,
    resume: bool,
    distilled: dict[str, str] | None,
    callbacks: list[TrainerCallback] | None,
    validator: Validator | None,
    model_and_tokenizer: tuple[Any, Any] | None,
    progress: bool,
    info: dict[str, Any] | None,
) -> TrainResult:

    train_cfg = config.train
    run = RunDir(out)
    key = training_key(config, dataset, distilled)
    weights_name = "adapter" if train_cfg.lora.enabled else "model"
    if run.valid("history.json", key) and run.valid(weights_name, key):
        log.warning("%s: training already finished with these settings; reusing it", out)
        return _result_from_disk(out, weights_name, reused=True)

    if is_main_process():
        run.update_info(
            base_model=config.model.name, method=train_cfg.method, dataset=str(Path(dataset.path).resolve()),
            dataset_key=dataset.checksum, template=config.model.template, status="training", train_key=key,
            backbone=config.model.backbone,
            **(info or {}),
        )
        inputs = {"dataset": dataset.checksum}
        if distilled is not None:
            inputs["distilled"] = content_key(sorted(distilled.items()))
        run.save_config(as_prepared(config, dataset), inputs=inputs)  # the data actually used

    if resume and weights_name in run.manifest()["artefacts"] and not run.valid(weights_name):
        # the best epoch's weights were altered after they were recorded; the checkpoints cannot
        # restore them (the last one may be later than the best epoch), so train again
        log.warning("%s/%s is corrupted: training again from the start", out, weights_name)
        resume = False
    checkpoint = last_complete_checkpoint(out / CHECKPOINTS) if resume else None
    if resume and checkpoint is None:
        log.warning("%s: no checkpoint to resume from; starting from the beginning", out)
    if checkpoint is None and is_main_process():
        _clear_previous_attempt(out)
        for name in (weights_name, "history.json"):  # recorded again when this training finishes
            run.invalidate(name)
    elif checkpoint is not None and is_main_process():
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        truncate_jsonl(out / "logs" / "metrics.jsonl", step)
        log.warning("resuming %s from %s", out, checkpoint.name)

    trainer, epoch_cb = build_trainer(
        config, dataset, out, distilled=distilled, callbacks=callbacks, validator=validator,
        model_and_tokenizer=model_and_tokenizer, progress=progress,
    )
    tokenizer = trainer.processing_class
    if is_main_process():  # which samples this run trains on (the SOFT probe is drawn from them)
        atomic_write_json(out / TRAIN_SAMPLES, [e.sample_id for e in trainer.train_dataset.encoded])
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if trainer.is_world_process_zero():
        if not (out / weights_name).exists():  # no epoch completed a validation (cannot happen normally)
            epoch_cb.save_weights(trainer.model, tokenizer)
        atomic_write_json(out / "history.json", epoch_cb.history)
        summary = {
            "best_epoch": epoch_cb.best_epoch,
            "best_metric": epoch_cb.best_metric,
            "metric": epoch_cb.metric,
            "stopped_early": epoch_cb.stopped_early,
            "global_step": trainer.state.global_step,
        }
        run.record(weights_name, key, best_epoch=epoch_cb.best_epoch)
        run.record("history.json", key, **summary)
        run.update_info(status="finished", **summary)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return TrainResult(
        out=out,
        history=list(epoch_cb.history),
        best_epoch=epoch_cb.best_epoch,
        best_metric=epoch_cb.best_metric,
        weights_dir=out / weights_name,
        stopped_early=epoch_cb.stopped_early,
        global_step=trainer.state.global_step,
    )


def _load_backbone(name: str) -> tuple[Any, Any]:
    from softrec.models.registry import load_backbone

    return load_backbone(name)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


def _model_config(model: Any) -> Any:
    from softrec.models.wrappers import causal_lm_of

    return causal_lm_of(model).config


def _clear_previous_attempt(out: Path) -> None:
    """A fresh (non-resumed) training must not mix with an older attempt's checkpoints and logs."""
    import shutil

    # and the resumable chunks of evaluations/distillations of the previous weights, which no key
    # made from the new weights can ever match (a killed run left them behind)
    for name in (CHECKPOINTS, "logs", "distilled.parts", *(str(p.relative_to(out)) for p in out.glob("eval/*.parts"))):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("history.json",):
        (out / name).unlink(missing_ok=True)


def _result_from_disk(out: Path, weights_name: str, *, reused: bool) -> TrainResult:
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    summary = RunDir(out).manifest()["artefacts"].get("history.json", {})
    return TrainResult(
        out=out,
        history=history,
        best_epoch=summary.get("best_epoch"),
        best_metric=summary.get("best_metric"),
        weights_dir=out / weights_name,
        stopped_early=bool(summary.get("stopped_early")),
        global_step=int(summary.get("global_step") or 0),
        reused=reused,
    )
