"""The training stage for SFT and SOFT: `train_llm` (one call: config, dataset, run directory).

It tokenizes the trained samples (`batches.py`), wraps the backbone in LoRA (or trains it fully) and
runs `SoftTrainer` (`soft_trainer.py`: the loss mixing the real and the self-distilled target by
lambda, which it reads from its `Curriculum`, `curriculum.py`). After every epoch the curriculum
measures the probe distance, then `EpochEndCallback` (`selection.py`) runs the injected validator,
keeps the best epoch's weights in RUN_DIR/adapter (or RUN_DIR/model), writes RUN_DIR/history.json and
stops early after `patience` epochs without gain.

Resume: Trainer checkpoints (weights, optimizer, scheduler, RNG, callback state) go to
RUN_DIR/checkpoints after every `checkpoint_every` optimizer steps and at each epoch end
(`checkpoints.py`); a finished training with the same key is reused. Every epoch's adapter alone
also goes to RUN_DIR/epochs/epoch-N (`train.keep_epoch_adapters`), the teachers `softrec distill
--epoch N` reads. Under torchrun / accelerate launch the Trainer does DDP; only rank 0 writes run files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from softrec.config import Config, TrainConfig, as_prepared
from softrec.data.dataset import PreparedDataset
from softrec.data.subsets import training_samples
from softrec.hardware import use_bf16
from softrec.runs import EPOCHS, RunDir, atomic_write_json, content_key
from softrec.training.batches import Collator, EncodedDataset, encode_samples
from softrec.training.checkpoints import (
    CheckpointSealCallback,
    EpochWeightsCallback,
    JsonlLogCallback,
    last_complete_checkpoint,
    truncate_jsonl,
    weights_saver,
)
from softrec.training.curriculum import Curriculum, curriculum_for
from softrec.training.fork import FORK_POINT, ForkPointCallback, fork_settings, start_from_fork
from softrec.training.selection import EpochEndCallback, Validator
from softrec.training.soft_trainer import SoftTrainer

log = logging.getLogger(__name__)

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


def training_key(config: Config, dataset: PreparedDataset, distilled: dict[str, str] | None,
                 for_fork: bool = False) -> str:
    """What a finished training depends on: settings (bar data, which the dataset key covers),
    the prepared data and the self-distilled targets. `for_fork`: without the method and alpha, the
    key of the epoch 1 that SOFT siblings share (`fork.py`)."""
    from softrec.data.prompts import prompt_fingerprint

    settings = config.model_dump(mode="json")
    settings.pop("data", None)
    for name in ("report_to", "keep_epoch_adapters", "keep_epoch_models"):  # where logs and extra copies go
        settings["train"].pop(name, None)  # never changes the weights (nor the keys of runs made before them)
    if for_fork:
        settings = fork_settings(settings)
    return content_key(settings, dataset.checksum, content_key(sorted((distilled or {}).items())),
                       prompt_fingerprint(config.model.template))


# ---------------------------------------------------------------- the stage
def build_trainer(
    config: Config,
    dataset: PreparedDataset,
    out: Path,
    *,
    distilled: dict[str, str] | None = None,
    curriculum: Curriculum | None = None,
    callbacks: list[TrainerCallback] | None = None,
    validator: Validator | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    progress: bool = True,
    fork_key: str | None = None,
) -> tuple[SoftTrainer, EpochEndCallback]:
    """The SoftTrainer `train_llm` runs (model with LoRA, data, curriculum, callbacks), ready for
    `.train()`. `curriculum=None` builds config.train.method's own (`curriculum_for`; none for SFT).
    `fork_key`: keep a SOFT run's epoch-1 state for its siblings under this key (`fork.py`)."""
    from transformers import set_seed

    train_cfg = config.train
    if validator is None and train_cfg.validate_every_epoch:
        raise ValueError("train.validate_every_epoch: pass validator= (the evaluation layer's "
                         "softrec.evaluation.validation.validator(config, dataset)) or turn validation off")
    if curriculum is None:
        curriculum = curriculum_for(config, dataset, out)
    set_seed(train_cfg.seed)
    model, tokenizer = model_and_tokenizer or _load_backbone(config.model.name)
    if config.model.backbone == "llara":
        from softrec.training.llara_items import attach_for_training

        model, tokenizer = attach_for_training(model, tokenizer, config, dataset, out)
    model = prepare_model(model, config)
    samples = training_samples(dataset, config)
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
        validator,
        weights_saver(out, train_cfg.lora.enabled),
        patience=train_cfg.patience,
        metric=train_cfg.selection_metric,
        checkpoint_every=train_cfg.checkpoint_every,
        tie_break=train_cfg.selection_tie_break,
    )
    # the curriculum first: its epoch-end event (d_k) runs before validation reads it
    all_callbacks: list[TrainerCallback] = [*([curriculum] if curriculum is not None else []), *(callbacks or []),
                                            epoch_cb, JsonlLogCallback(out / "logs" / "metrics.jsonl"),
                                            CheckpointSealCallback()]
    if curriculum is not None and fork_key is not None:  # SOFT: its epoch 1 is every sibling's (`fork.py`)
        all_callbacks.append(ForkPointCallback(out, fork_key, curriculum.scheduler.first()))
    lora = train_cfg.lora.enabled
    if train_cfg.keep_epoch_adapters if lora else train_cfg.keep_epoch_models:  # a whole model per epoch: opt-in
        all_callbacks.append(EpochWeightsCallback(out, lora))
    if args.process_index == 0:
        all_callbacks += _tracker_callbacks(train_cfg.report_to, out)
    trainer = SoftTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        # the collator lays each batch out for the curriculum's lambda, the loss mixes by the same value
        data_collator=Collator(_pad_id(tokenizer), (lambda: curriculum.lam) if curriculum is not None else (lambda: 0.0),
                               model_config=_model_config(model)),
        callbacks=all_callbacks,
        curriculum=curriculum,
        fast_loss=train_cfg.logits_at_labels_only,
        bf16_autocast=bf16,
        lengths=[e.length for e in encoded],
        group_by_length=train_cfg.group_by_length,
        processing_class=tokenizer,  # validators and the curriculum's probe read it from the trainer
    )
    for callback in all_callbacks:
        if hasattr(callback, "bind"):
            callback.bind(trainer)
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
    curriculum: Curriculum | None = None,
    callbacks: list[TrainerCallback] | None = None,
    validator: Validator | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    fork_from: Path | None = None,
) -> TrainResult:
    """Train config.model.name on dataset's train split into RUN_DIR `out` (see module docstring).

    `validator` scores each epoch on validation data (required unless config.train.validate_every_epoch
    is false: then the last epoch is kept); the evaluation layer provides one
    (`softrec.evaluation.validation.validator`). `curriculum=None` builds the method's own (SOFT). `model_and_tokenizer` overrides loading config.model.name (tests);
    `info` adds fields to run.json. The run directory is locked (by rank 0) while training.
    `fork_from`: a SOFT sibling run whose epoch 1 this one takes instead of training it (`fork.py`).
    """
    if validator is None and config.train.validate_every_epoch:
        raise ValueError("train.validate_every_epoch: pass validator= (the evaluation layer's "
                         "softrec.evaluation.validation.validator(config, dataset)) or turn validation off")
    lock = RunDir(out) if is_main_process() else contextlib.nullcontext()
    with lock:
        try:
            return _train_llm(
                config, dataset, Path(out), resume=resume, distilled=distilled, curriculum=curriculum, callbacks=callbacks,
                validator=validator, model_and_tokenizer=model_and_tokenizer, progress=progress, info=info,
                fork_from=fork_from,
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
    curriculum: Curriculum | None,
    callbacks: list[TrainerCallback] | None,
    validator: Validator | None,
    model_and_tokenizer: tuple[Any, Any] | None,
    progress: bool,
    info: dict[str, Any] | None,
    fork_from: Path | None,
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
    fork_key = training_key(config, dataset, distilled, for_fork=True) if distilled is not None else None
    if checkpoint is None and is_main_process():
        _clear_previous_attempt(out)
        stale = [name for name in run.manifest()["artefacts"] if name.startswith(f"{EPOCHS}/")]
        for name in (weights_name, "history.json", *stale):  # recorded again when this training finishes
            run.invalidate(name)
        if fork_from is not None and fork_key is not None:
            checkpoint = _fork(config, Path(fork_from), out, fork_key)
    elif checkpoint is not None and is_main_process():
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        truncate_jsonl(out / "logs" / "metrics.jsonl", step)
        log.warning("resuming %s from %s", out, checkpoint.name)

    trainer, epoch_cb = build_trainer(
        config, dataset, out, distilled=distilled, curriculum=curriculum, callbacks=callbacks, validator=validator,
        model_and_tokenizer=model_and_tokenizer, progress=progress, fork_key=fork_key,
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


def _fork(config: Config, sibling: Path, out: Path, key: str) -> Path | None:
    """The checkpoint SIBLING's epoch 1 gives this run (`fork.start_from_fork`); None: train from the start."""
    from softrec.training.curriculum import scheduler_for

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would have to copy it: not worth it there
        log.warning("--fork-from: not under several processes; training from the start")
        return None
    scheduler = scheduler_for(config.train.method, config.soft, config.train.epochs)
    return start_from_fork(sibling, out, key, scheduler.first(), scheduler.needs_distances)


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
    # the previous attempt's epoch weights are no teachers of this training, its epoch 1 no sibling's
    for name in (CHECKPOINTS, "logs", EPOCHS, FORK_POINT, "distilled.parts",
                 *(str(p.relative_to(out)) for p in out.glob("eval/*.parts"))):
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
