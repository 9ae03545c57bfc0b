"""`softrec bench speed --out DIR`: softrec's speed next to the obvious baseline, measured in one run.

    softrec bench speed --out DIR [--model gemma-3-270m] [--data PREPARED_DIR] [--quick]

Sections (each: raw repeats, their median, and a ratio):
  train       training tokens/s per optimizer step: softrec's SoftTrainer (built by `build_trainer`,
              what `softrec train` runs) vs a plain `transformers.Trainer` (model loss over the full
              vocabulary, fp32, DataCollatorForSeq2Seq), same samples and LoRA; the setups alternate
              step by step, so load from other processes hits both alike. Also a SOFT step
              (lambda 0.5: both targets in one packed forward) vs the SFT step, in seconds.
  soft_epoch  epoch time of SOFT (adaptive curriculum, including its per-epoch probe distance) vs SFT,
              both through `train_llm` on the same N samples; SOFT trains on targets that
              `softrec.inference.distill` generates from the SFT run (timed too). Validation is off
              for both (it costs both the same).
  decoding    catalogue-constrained beam search prompts/s: softrec (prompt-shared KV cache,
              catalogue-token vocabulary) vs `generate(prefix_allowed_tokens_fn=...)` over a dict
              trie, batch by batch in turns; whether every prompt's ranked items are identical.
  evaluation  prompts/s of the full `evaluate_model` path (decode + grounding + metrics) on K test
              prompts with the SFT run's model, next to the time spent in decoding alone.
  mfu         model FLOP utilisation of the training steps above: model FLOPs (formula in
              `FlopShape.step_flops`) per second over this machine's measured matmul peak (bf16
              when the step runs under bf16 autocast, fp32 otherwise; both peaks are reported).

Writes DIR/results.json and DIR/results.md (rewritten after every section, atomically). The
data default is amazon-books from the shared data folder when present, else the built-in demo.

This module is the command (options, sizes, data, the run); the measurements live in `sections`
(built on `training`, `decoding` and `flops`), results.md in `report`, timing in `softrec.bench.timing`.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from softrec.bench.speed.report import format_ratio, render_markdown, write_results
from softrec.bench.speed.sections import SECTIONS, Bench
from softrec.bench.timing import stopwatch
from softrec.config import add_config_options, config_from_args
from softrec.errors import UserError

Log = Callable[[str], None]
REFERENCE_TRAIN, REFERENCE_PROBE = 4096, 256  # the reference's training samples and probe-set size

# Sizes: the default run (minutes on a 2-core CPU with Gemma 3 270M) and --quick (a smoke run).
# Unconstrained beam search (distillation, the probe, evaluation) is the slow part on a CPU: plain
# `generate` takes about 8 s a prompt for Gemma 3 270M running to 64 new tokens. The engine's batch
# is the configuration's default (eval.batch_size): at 2 prompts a batch it ran 4x slower a prompt.
DEFAULTS = {"train_samples": 32, "epoch_samples": 16, "micro_batch": 8, "warmup": 1, "epochs": 2,
            "prompts": 16, "batch_size": 32, "repeats": 3, "matmul_size": 2048}
QUICK = {"train_samples": 4, "epoch_samples": 2, "micro_batch": 2, "warmup": 1, "epochs": 1,
         "prompts": 2, "batch_size": 1, "repeats": 2, "matmul_size": 512}


def machine() -> dict[str, Any]:
    """`softrec.bench.machine()` (CPU, cores, threads, RAM, GPUs, versions, commit), plus the date,
    the device the measurements ran on and whether the CPU computes bf16 natively."""
    from softrec.bench import machine as describe_machine
    from softrec.hardware import cpu_has_bf16
    from softrec.models.registry import default_device

    return {**describe_machine(), "device": str(default_device()), "cpu_native_bf16": cpu_has_bf16(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- data and the command
def resolve_data(data: Path | None, sizes: dict[str, int], seed: int, work: Path, log: Log) -> Any:
    """A prepared dataset with exactly the benchmark's train and test samples (stages such as
    distillation work on a whole split). Source: --data, else amazon-books from the shared data
    folder (as `softrec data prepare --dataset amazon-books` finds it), else the built-in demo."""
    from softrec.config import DataConfig
    from softrec.data.dataset import PreparedDataset, write_prepared
    from softrec.data.protocol import prepare_dataset
    from softrec.data.readers import data_dir
    from softrec.data.subsets import subset

    n_train, n_test = max(sizes["train_samples"], sizes["epoch_samples"]), sizes["prompts"]
    if data is not None:
        if not Path(data).is_dir():
            raise UserError(f"--data {data}: no such directory (prepare one with `softrec data prepare`)")
        source = PreparedDataset.load(data)
    else:
        root = data_dir()
        name = "amazon-books" if root is not None and (root / "amazon-books").exists() else "demo"
        log(f"  preparing {name} ({n_train} train, {n_test} test samples)")
        config = DataConfig(dataset=name, train_size=n_train, valid_size=8, test_size=n_test, seed=seed)
        source = prepare_dataset(config, work / f"data-{name}-{n_train}-{n_test}")
    splits = {
        "train": subset(source.split("train"), n_train, seed),
        "valid": source.split("valid")[:8],
        "test": source.split("test")[:n_test],
    }
    if len(splits["train"]) < n_train or len(splits["test"]) < n_test:
        raise UserError(f"{source.path}: has {len(splits['train'])} train and {len(splits['test'])} test "
                        f"samples; the benchmark needs {n_train} and {n_test} (lower --train-samples/--prompts)")
    return write_prepared(work / "data", name=source.name, domain=source.domain, catalogue=source.catalogue,
                          splits=splits, stats={"benchmark_subset_of": str(source.path)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where results.json and results.md go")
    parser.add_argument("--model", default="gemma-3-270m", metavar="NAME_OR_PATH",
                        help="backbone (default gemma-3-270m; tiny for a seconds-long smoke run)")
    parser.add_argument("--data", type=Path, metavar="PREPARED_DIR",
                        help="prepared dataset (default: amazon-books from the shared data folder, else demo)")
    parser.add_argument("--quick", action="store_true", help="smallest sizes: a smoke run, not a measurement")
    sizes = parser.add_argument_group("sizes (defaults: full run / --quick)")
    for flag, text in (
        ("train-samples", "training samples of the train section (one pass)"),
        ("epoch-samples", "samples of each SFT/SOFT epoch (and of distillation)"),
        ("micro-batch", "samples per optimizer step in the train section"),
        ("warmup", "first optimizer steps not timed in the train section"),
        ("epochs", "SFT and SOFT epochs (each epoch is one repeat)"),
        ("prompts", "test prompts for decoding and evaluation"),
        ("batch-size", "prompts per generate call (eval.batch_size, also for distillation and probes)"),
        ("repeats", "matmul peak repeats"),
        ("matmul-size", "side of the square matmuls of the peak"),
    ):
        key = flag.replace("-", "_")
        sizes.add_argument(f"--{flag}", type=int, metavar="N", help=f"{text} ({DEFAULTS[key]} / {QUICK[key]})")
    sizes.add_argument("--beams", type=int, metavar="N", help="beams for decoding and evaluation (eval.num_beams, 4)")
    sizes.add_argument("--probe-size", type=int, metavar="N",
                        help="SOFT probe set (default: epoch samples x 256/4096, the reference ratio, at least 1)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's choice)")
    parser.add_argument("--work", type=Path, metavar="DIR",
                        help="scratch folder for prepared data and runs (default: a temporary folder)")
    add_config_options(parser)
    parser.set_defaults(func=run)


def resolve_sizes(args: argparse.Namespace) -> dict[str, int]:
    base = QUICK if args.quick else DEFAULTS
    sizes = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in base.items()}
    for key, value in sizes.items():
        if value < (0 if key == "warmup" else 1):
            raise UserError(f"--{key.replace('_', '-')}: expected a positive number, got {value}")
    return sizes


def canonical_command(args: argparse.Namespace, sizes: dict[str, int], probe: int) -> str:
    """The command with every size spelled out (reruns the same measurement)."""
    parts = ["softrec", "bench", "speed", "--out", str(args.out), "--model", args.model]
    if args.data:
        parts += ["--data", str(args.data)]
    for key, value in sizes.items():
        parts += [f"--{key.replace('_', '-')}", str(value)]
    parts += ["--probe-size", str(probe)]
    for name in ("beams", "threads"):
        if getattr(args, name):
            parts += [f"--{name}", str(getattr(args, name))]
    for item in args.overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench speed {time.perf_counter() - started:7.1f}s] {message}", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = resolve_sizes(args)
    probe = args.probe_size or max(1, round(sizes["epoch_samples"] * REFERENCE_PROBE / REFERENCE_TRAIN))
    config = config_from_args(args, {
        "model.name": args.model, "train.micro_batch": sizes["micro_batch"],
        "eval.batch_size": sizes["batch_size"], "eval.num_beams": args.beams,
    })
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softrec-bench-speed-")))
        else:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        dataset = resolve_data(args.data, sizes, config.data.seed, work, log)
        results: dict[str, Any] = {
            "machine": machine(),
            "command": canonical_command(args, sizes, probe),
            "argv": sys.argv,
            "settings": {"model": config.model.name, "dataset": dataset.name, "sizes": sizes,
                         "probe_size": probe, "config": config.model_dump(mode="json")},
            "complete": False,
        }
        bench = Bench(config, dataset, work, sizes, probe, log, results)
        pending = list(SECTIONS)
        for name, section in SECTIONS.items():
            results["pending"] = pending = pending[1:]
            log(f"{name} ...")
            with stopwatch() as t:
                results[name] = section(bench)
            results[name]["section_seconds"] = t[0]
            log(f"{name}: ratio {format_ratio(results[name]['ratio'])} ({t[0]:.1f} s)")
            write_results(args.out, results)
        results["complete"] = True
        results.pop("pending")
        results["total_seconds"] = time.perf_counter() - started
        write_results(args.out, results)
    print(render_markdown(results))
    log(f"results in {args.out}/results.json and results.md")
    return 0
