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

The measurement itself lives in `softrec.bench.speed.training` (`compare_training`), which
`softrec bench speed` runs too; this script keeps the command the committed results cite.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


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
    if args.samples // args.micro_batch <= args.warmup:
        parser.error("--samples / --micro-batch must exceed --warmup")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from softrec.bench import cpu_model
    from softrec.bench.speed.training import compare_training, step_summary
    from softrec.config import DataConfig, load_config
    from softrec.data.protocol import prepare_dataset
    from softrec.hardware import cpu_has_bf16

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; native bf16: {cpu_has_bf16()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    data = DataConfig(dataset=str(args.dataset), train_size=args.samples, valid_size=8, test_size=8)
    dataset = prepare_dataset(data, work / f"{Path(args.dataset).name}-{args.samples}",
                              log=lambda m: print(f"  data: {m}", flush=True))
    config = load_config(values={"model.name": args.model, "train.micro_batch": args.micro_batch})
    steps = args.samples // args.micro_batch
    print(f"model {args.model}; {args.samples} samples of {dataset.name}; micro-batch {args.micro_batch}; "
          f"{steps} steps, first {args.warmup} not timed")

    comp = compare_training(config, dataset, work, samples=args.samples, warmup=args.warmup,
                            soft=args.soft_cost, log=lambda m: print(m, flush=True))
    print(f"tokens per sample: mean {comp.mean_tokens:.0f}")
    results = {name: step_summary(comp.timed(name)) for name in comp.steps}
    for name in ("plain", "softrec"):
        r = results[name]
        print(f"{name:8s} median {r['tokens_per_s']['median']:8.1f} tokens/s over {r['steps']} steps "
              f"(aggregate {r['aggregate_tokens_per_s']:.1f} tokens/s: {r['tokens']} tokens in {r['seconds']:.1f} s)")
    if args.soft_cost:
        # same sampler seed and batch count: step k holds (nearly) the same samples in both
        soft, sft = results["soft"]["seconds"], results["softrec"]["seconds"]
        print(f"soft-cost: SOFT steps (lambda 0.5, both targets) {soft:.1f} s vs SFT steps {sft:.1f} s over the "
              f"same {results['soft']['steps']} timed steps: {soft / sft:.2f}x (the reference's two passes: >= 2x)")
    ratio = results["softrec"]["tokens_per_s"]["median"] / results["plain"]["tokens_per_s"]["median"]
    print(f"speedup: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
