"""SFT training speed: softrec's training path vs a plain Hugging Face Trainer setup.

    .venv/bin/python benchmarks/bench_train_speed.py [--model gemma-3-270m] [--samples 64] [--soft-cost]
    .venv/bin/python benchmarks/bench_train_speed.py --model tiny        # a seconds-long smoke run

Both train the same backbone with the same LoRA (r=8, alpha=16, q/v, dropout 0.05) on the same
tokenized samples (the first N training windows of amazon-books, prepared by softrec's data layer;
Alpaca prompt + quoted title + EOS, loss on the response only), micro-batch 8, one optimizer step
per micro-batch, lr 1e-4, one pass over the samples:
- plain: a `transformers.Trainer` with the model's own loss (LM head over the full vocabulary at
  every position), fp32, `DataCollatorForSeq2Seq` padding to the longest sample of a random batch;
- softrec: the `SoftTrainer` that `softrec train` runs, built by the same `build_trainer` (LM head
  only at labelled positions, bf16 autocast where the CPU has native bf16, length-grouped batches
  with dynamic padding).
Each optimizer step runs as `Trainer.train` runs it (training_step, gradient clipping, optimizer and
scheduler step); the setups ALTERNATE step by step, so CPU contention from other processes hits both
alike. Throughput counts non-padding tokens (equal for both over a pass); the first --warmup steps
are dropped. It prints the median tokens/s of each and their ratio; the last line is
`speedup: <ratio>`. --soft-cost also times a SOFT step (lambda 0.5: both targets, one packed forward)
against the SFT step on the same samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class TokenCounter:
    """Non-padding tokens the model's forward sees (2D attention masks: both setups' SFT rows)."""

    def __init__(self, model: Any):
        self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.tokens += int(mask.sum())


def steps(trainer: Any, count: int) -> Iterator[tuple[float, int]]:
    """(seconds, tokens) of each optimizer step, run as `Trainer.train` runs one (training_step, clip,
    optimizer and scheduler step) so that two setups can alternate step by step."""
    counter = TokenCounter(trainer.model)
    trainer.create_optimizer_and_scheduler(num_training_steps=count)
    trainer.current_gradient_accumulation_steps = 1
    batches = iter(trainer.get_train_dataloader())
    for _ in range(count):
        batch = next(batches)
        counter.tokens = 0
        started = time.perf_counter()
        trainer.training_step(trainer.model, batch)
        torch.nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], 1.0)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad()
        yield time.perf_counter() - started, counter.tokens


def summary(records: list[tuple[float, int]], warmup: int) -> dict[str, float]:
    timed = records[warmup:]
    rates = [n / t for t, n in timed]
    return {
        "steps": len(timed),
        "median": statistics.median(rates),
        "aggregate": sum(n for _, n in timed) / sum(t for t, _ in timed),
        "tokens": sum(n for _, n in timed),
        "seconds": sum(t for t, _ in timed),
    }


def prepare(args: argparse.Namespace) -> Any:
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    out = Path(args.work) / f"{Path(args.dataset).name}-{args.samples}"
    config = DataConfig(dataset=str(args.dataset), train_size=args.samples, valid_size=8, test_size=8)
    return prepare_dataset(config, out, log=lambda m: print(f"  data: {m}", flush=True))


def load_model(name: str) -> tuple[Any, Any]:
    from softrec.models.registry import load_backbone

    return load_backbone(name)


def plain_trainer(args: argparse.Namespace, encoded: list[Any], config: Any) -> Any:
    """The obvious setup: HF Trainer + model loss (full logits), fp32, Seq2Seq collator, random order."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = load_model(args.model)
    tokenizer.padding_side = "right"
    lora = config.train.lora
    torch.manual_seed(config.train.seed)
    model = get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM"))
    rows = [
        {"input_ids": e.prompt_ids + e.real_ids, "attention_mask": [1] * (len(e.prompt_ids) + len(e.real_ids)),
         "labels": [-100] * len(e.prompt_ids) + e.real_ids}
        for e in encoded
    ]
    return Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.work) / "plain"), per_device_train_batch_size=args.micro_batch,
            learning_rate=config.train.learning_rate, lr_scheduler_type="constant", save_strategy="no",
            report_to="none", seed=config.train.seed, disable_tqdm=True, dataloader_pin_memory=False,
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )


def softrec_trainer(args: argparse.Namespace, dataset: Any, config: Any, distilled: dict[str, str] | None = None):
    """What `softrec train` runs: `build_trainer` is the constructor `train_llm` uses."""
    from softrec.training.trainer import build_trainer

    out = Path(tempfile.mkdtemp(prefix="softrec-run-", dir=args.work))
    trainer, _ = build_trainer(config, dataset, out, distilled=distilled, progress=False)
    return trainer


def soft_config(config: Any) -> Any:
    from softrec.config import Config

    tree = config.model_dump()
    tree["train"]["method"] = "soft-fixed"
    tree["soft"]["fixed_lambda"] = 0.5
    return Config.model_validate(tree)


def stand_in_distilled(dataset: Any, count: int) -> dict[str, str]:
    """SOFT needs self-distilled targets: another sample's real title stands in (a generation is a
    title-like text of similar length)."""
    from softrec.data.prompts import response_text

    samples = dataset.split("train")[:count]
    return {s.sample_id: response_text(dataset.titles[samples[i - 1].target]) for i, s in enumerate(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m", help="registry name (tiny for a smoke run)")
    parser.add_argument("--dataset", default=str(SHARED / "amazon-books"), help="raw dataset dir or name")
    parser.add_argument("--samples", type=int, default=64, help="training samples (one pass)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "softrec-bench-train"))
    parser.add_argument("--soft-cost", action="store_true", help="also time a SOFT step (lambda 0.5)")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared machine: other processes "
                        "then slow both setups alike instead of stalling multi-threaded kernels)")
    args = parser.parse_args()
    args.steps = args.samples // args.micro_batch  # one pass over the samples, one step per micro-batch
    if args.steps <= args.warmup:
        parser.error("--samples / --micro-batch must exceed --warmup")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from softrec.config import load_config
    from softrec.training.batches import encode_samples
    from softrec.training.loss import cpu_has_bf16

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; native bf16: {cpu_has_bf16()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    dataset = prepare(args)
    config = load_config(values={
        "model.name": args.model, "train.micro_batch": args.micro_batch, "train.effective_batch": args.micro_batch,
        "train.epochs": 1, "train.validate_every_epoch": False, "train.checkpoint_every": 0,
    })
    _, tokenizer = load_model(args.model)
    samples = dataset.split("train")[: args.samples]
    encoded = encode_samples(samples, dataset, tokenizer, max_length=config.model.max_length)
    lengths = [len(e.prompt_ids) + len(e.real_ids) for e in encoded]
    print(f"model {args.model}; {len(encoded)} samples of {dataset.name}; tokens per sample: "
          f"mean {statistics.mean(lengths):.0f}, max {max(lengths)}; micro-batch {args.micro_batch}; "
          f"{args.steps} steps, first {args.warmup} not timed")

    setups = {"plain": plain_trainer(args, encoded, config), "softrec": softrec_trainer(args, dataset, config)}
    if args.soft_cost:
        distilled = stand_in_distilled(dataset, args.samples)
        setups["soft"] = softrec_trainer(args, dataset, soft_config(config), distilled)
    runners = {name: steps(trainer, args.steps) for name, trainer in setups.items()}
    records: dict[str, list[tuple[float, int]]] = {name: [] for name in setups}
    for step in range(args.steps):  # alternate the setups step by step: they share any CPU contention
        for name, runner in runners.items():
            records[name].append(next(runner))
        print(f"  step {step + 1}/{args.steps}: " + ", ".join(
            f"{name} {records[name][-1][0]:.1f} s" for name in setups), flush=True)
    results = {name: summary(records[name], args.warmup) for name in setups}
    for name in ("plain", "softrec"):
        r = results[name]
        print(f"{name:8s} median {r['median']:8.1f} tokens/s over {r['steps']} steps "
              f"(aggregate {r['aggregate']:.1f} tokens/s: {r['tokens']} tokens in {r['seconds']:.1f} s)")
    if args.soft_cost:
        # same sampler seed and batch count: step k holds (nearly) the same samples in both
        soft, sft = results["soft"]["seconds"], results["softrec"]["seconds"]
        print(f"soft-cost: SOFT steps (lambda 0.5, both targets) {soft:.1f} s vs SFT steps {sft:.1f} s over the "
              f"same {results['soft']['steps']} timed steps: {soft / sft:.2f}x (the reference's two passes: >= 2x)")
    ratio = results["softrec"]["median"] / results["plain"]["median"]
    print(f"speedup: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
