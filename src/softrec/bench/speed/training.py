"""Training steps side by side: softrec's trainer vs a plain `transformers.Trainer`, step by step."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softrec.bench.speed.flops import FlopShape
from softrec.bench.timing import series, stopwatch
from softrec.errors import UserError

Log = Callable[[str], None]


@dataclass
class TimedStep:
    """One optimizer step: its time and the batch's shape (rows x padded width)."""

    seconds: float
    tokens: int  # non-padding tokens the forward reads
    labelled: int  # positions with a target (the head's useful work)
    squares: int  # sum over rows of (non-padding length)^2: the attention term
    rows: int
    width: int


def batch_step(batch: dict[str, Any], seconds: float = 0.0) -> TimedStep:
    """Token counts of a collated batch (before the Trainer consumes it): a 2D attention mask gives
    each row's length; SOFT's packed rows (4D mask) count their `n_tokens`, attention unknown."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        lengths = mask.sum(dim=1)
        tokens, squares = int(lengths.sum()), int((lengths**2).sum())
    else:
        tokens, squares = int(batch.get("n_tokens") or ids.numel()), 0
    labelled = sum(int((batch[k] != -100).sum()) for k in ("labels", "targets", "targets_distilled")
                   if isinstance(batch.get(k), torch.Tensor))
    return TimedStep(seconds, tokens, labelled, squares, rows, width)


def run_steps(trainer: Any, count: int) -> Iterator[TimedStep]:
    """Each optimizer step as `Trainer.train` runs one (training_step, gradient clipping, optimizer
    and scheduler step), one micro-batch per step, so that setups can alternate step by step."""
    trainer.create_optimizer_and_scheduler(num_training_steps=count)
    trainer.current_gradient_accumulation_steps = 1
    batches = iter(trainer.get_train_dataloader())
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for _ in range(count):
        batch = next(batches)
        step = batch_step(batch)
        with stopwatch() as t:
            trainer.training_step(trainer.model, batch)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.model.zero_grad()
        step.seconds = t[0]
        yield step


def plain_trainer(config: Any, samples: Sequence[Any], dataset: Any, work: Path) -> Any:
    """The obvious setup: HF Trainer + the model's own loss (full logits), Seq2Seq collator, random
    batches; same backbone, LoRA, learning rate, micro-batch and dtype as softrec's (bf16 autocast
    where softrec uses it, so the ratio measures the method, not the hardware's bf16)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from softrec.hardware import use_bf16
    from softrec.models.registry import load_backbone
    from softrec.training.batches import encode_samples
    from softrec.training.trainer import prepare_model

    model, tokenizer = load_backbone(config.model.name)
    tokenizer.padding_side = "right"
    encoded = encode_samples(samples, dataset, tokenizer, template=config.model.template,
                             max_length=config.model.max_length)
    torch.manual_seed(config.train.seed)
    model = prepare_model(model, config)  # the same LoRA softrec trains
    rows = [
        {"input_ids": e.prompt_ids + e.real_ids, "attention_mask": [1] * (len(e.prompt_ids) + len(e.real_ids)),
         "labels": [-100] * len(e.prompt_ids) + e.real_ids}
        for e in encoded
    ]
    return Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "plain"), per_device_train_batch_size=config.train.micro_batch,
            learning_rate=config.train.learning_rate, lr_scheduler_type="constant", save_strategy="no",
            report_to="none", seed=config.train.seed, disable_tqdm=True, dataloader_pin_memory=False,
            use_cpu=not torch.cuda.is_available(), bf16=use_bf16(config.train.bf16, model.device.type),
        ),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )


def softrec_trainer(config: Any, dataset: Any, work: Path, distilled: dict[str, str] | None = None) -> Any:
    """What `softrec train` runs: `build_trainer` is the constructor `train_llm` uses."""
    from softrec.training.trainer import build_trainer

    out = Path(tempfile.mkdtemp(prefix="softrec-run-", dir=work))
    trainer, _ = build_trainer(config, dataset, out, distilled=distilled, progress=False)
    return trainer


def step_config(config: Any, samples: int, *, soft: bool = False) -> Any:
    """One optimizer step per micro-batch over `samples` training samples; `soft`: lambda 0.5."""
    train = {"effective_batch": config.train.micro_batch, "epochs": 1, "train_samples": samples,
             "validate_every_epoch": False, "checkpoint_every": 0}
    if soft:
        return config.with_(train={**train, "method": "soft-fixed"}, soft={"fixed_lambda": 0.5})
    return config.with_(train=train)


def stand_in_distilled(samples: Sequence[Any], dataset: Any) -> dict[str, str]:
    """SOFT needs self-distilled targets: another sample's real title stands in (a generation is a
    title-like text of similar length)."""
    from softrec.data.prompts import response_text

    return {s.sample_id: response_text(dataset.titles[samples[i - 1].target]) for i, s in enumerate(samples)}


@dataclass
class TrainingComparison:
    steps: dict[str, list[TimedStep]]  # setup -> every step, warm-up included
    warmup: int
    shapes: dict[str, FlopShape]
    bf16: dict[str, bool]  # setup -> ran under bf16 autocast
    samples: int
    mean_tokens: float = 0.0

    def timed(self, name: str) -> list[TimedStep]:
        return self.steps[name][self.warmup :]


def compare_training(config: Any, dataset: Any, work: Path, *, samples: int, warmup: int,
                     soft: bool = False, log: Log = print) -> TrainingComparison:
    """plain vs softrec (and, with `soft`, a lambda-0.5 SOFT step) on the same first-`samples`
    training samples, one pass, the setups alternating step by step."""
    from softrec.data.subsets import subset

    sft = step_config(config, samples)
    chosen = subset(dataset.split("train"), samples, config.data.seed)  # what build_trainer trains on
    setups = {"plain": plain_trainer(sft, chosen, dataset, work), "softrec": softrec_trainer(sft, dataset, work)}
    if soft:
        setups["soft"] = softrec_trainer(step_config(config, samples, soft=True), dataset, work,
                                         stand_in_distilled(chosen, dataset))
    count = len(chosen) // sft.train.micro_batch  # whole micro-batches only
    if count <= warmup:
        raise UserError(f"{len(chosen)} training samples in micro-batches of {sft.train.micro_batch} give "
                        f"{count} steps: need more than the {warmup} warm-up steps")
    runners = {name: run_steps(trainer, count) for name, trainer in setups.items()}
    result = TrainingComparison(
        {name: [] for name in setups}, warmup,
        {name: FlopShape.of(t.model) for name, t in setups.items()},
        {name: bool(getattr(t, "bf16_autocast", False) or t.args.bf16) for name, t in setups.items()}, len(chosen),
    )
    for number in range(count):  # alternate the setups: they share any CPU contention
        for name, runner in runners.items():
            result.steps[name].append(next(runner))
        log(f"  step {number + 1}/{count}: " + ", ".join(
            f"{name} {result.steps[name][-1].seconds:.1f} s" for name in setups))
    result.mean_tokens = sum(s.tokens for s in result.steps["softrec"]) / len(chosen)
    return result


def step_summary(steps: Sequence[TimedStep]) -> dict[str, Any]:
    """tokens/s per step (median) and over all steps (aggregate)."""
    tokens, seconds = sum(s.tokens for s in steps), sum(s.seconds for s in steps)
    return {
        "tokens_per_s": series([s.tokens / s.seconds for s in steps]),
        "step_seconds": series([s.seconds for s in steps]),
        "aggregate_tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        "steps": len(steps),
    }

