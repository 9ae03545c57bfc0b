"""`SoftTrainer`: transformers' Trainer with SOFT's loss

    (1 - lambda) * CE(real target) + lambda * CE(self-distilled target)

with both targets of the same inputs in ONE forward and the unused half skipped when lambda is 0 or 1
(lambda = 0 is plain SFT). lambda comes from the trainer's curriculum (`curriculum.py`), read when the
collator lays a batch out and when the loss mixes the targets; the LM head runs only at labelled
positions (`loss.py`) and under bf16 autocast where the CPU/GPU computes bf16 natively.

Resume: callback state travels with the Trainer checkpoints through the Trainer's `ExportableState`
mechanism; `SoftTrainer` restores it IN PLACE (the stock Trainer re-instantiates callbacks, which
loses their references and their order), so any callback that is an `ExportableState` gets its
`attributes` back, or its `load_state(attributes)` called.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import ExportableState

from softrec.training.batches import LengthGroupedSampler
from softrec.training.loss import autocast, lm_losses


class SoftTrainer(Trainer):
    """Trainer whose loss mixes the real and the self-distilled target by `soft_lambda`, which it
    reads from its curriculum (the one owner of lambda; no curriculum: 0, plain SFT)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        *args: Any,
        curriculum: Any = None,
        fast_loss: bool = True,
        bf16_autocast: bool = False,
        lengths: list[int] | None = None,
        group_by_length: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.curriculum = curriculum  # softrec.training.curriculum.Curriculum or None
        self.fast_loss = fast_loss
        self.bf16_autocast = bf16_autocast
        self.lengths = lengths
        self.group_by_length = group_by_length
        self.epoch_stats = new_stats()
        self._window = new_stats()  # since the last log line
        self._window_start = time.monotonic()

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """A checkpoint without the tokenizer: resuming reloads it with the backbone, and Gemma's is
        33 MB in every checkpoint (train.save_total_limit of them). The run's adapter/ and model/
        folders get theirs from softrec.training.checkpoints.weights_saver."""
        tokenizer, self.processing_class = self.processing_class, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.processing_class = tokenizer

    @property
    def soft_lambda(self) -> float:
        """lambda of the epoch in progress: the curriculum's (the collator reads the same value)."""
        return float(self.curriculum.lam) if self.curriculum is not None else 0.0

    # loss -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lam = self.soft_lambda
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
            add_stats(stats, loss, real, distilled, n_tokens)
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
        self._window = new_stats()
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


def new_stats() -> dict[str, float]:
    return {"loss": 0.0, "n": 0, "real": 0.0, "n_real": 0, "distilled": 0.0, "n_distilled": 0, "tokens": 0}


def add_stats(stats: dict[str, float], loss: Any, real: Any, distilled: Any, n_tokens: int) -> None:
    stats["loss"] += float(loss.detach())
    stats["n"] += 1
    stats["tokens"] += n_tokens
    if real is not None:
        stats["real"] += float(real.detach())
        stats["n_real"] += 1
    if distilled is not None:
        stats["distilled"] += float(distilled.detach())
        stats["n_distilled"] += 1


def reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """Sum the per-rank statistics under DDP (every rank gets the totals)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(stats)
    keys = sorted(stats)
    tensor = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))
