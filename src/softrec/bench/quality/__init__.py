"""`softrec bench quality`: every method on the shared datasets, one results table.

    softrec bench quality --suite cpu-small --out DIR [--datasets ...] [--methods ...] [--dry-run | --status]
    softrec bench quality --suite gpu --out DIR [--launcher "torchrun --nproc_per_node 4"]

Methods: ICL zero- and few-shot (untuned backbone), SASRec, GRU4Rec, SFT, SOFT and SOFT-sd-only on
the BIGRec backbone, and SFT and SOFT on the LLaRA backbone. Every step is a `softrec` command, run
as a user would run it (the results list them verbatim), into DIR/<dataset>/<method>/. All methods of
a dataset are evaluated on the same test samples, full ranking, l2 grounding for the LLM rows.

Results: DIR/results.json (per dataset and method: the test metrics, each with its 95% bootstrap
interval, and the paired bootstrap difference against SFT), DIR/results.md (the table, the relative
gain of SOFT over SFT per dataset and metric and on average, the commands), DIR/results.png and
DIR/curves.png (every LLM run's validation HR@10 per epoch, the teacher's included).
Study rows soft-t{E}-{rule} (#15, "when does SOFT help?"): SOFT at the suite's study_alpha on targets
that SFT's epoch E (or `best`) distils by rule raw|quoted|grounded; paired with SFT like the SOFT
rows, kept out of the average gain, with their teacher's facts and DIR/study.png.

Resumable: finished steps are recorded in DIR/steps.json and skipped; an interrupted step is rerun,
and `softrec train` picks up its last checkpoint (`--resume`), evaluation and distillation their
finished chunks. `--status` shows where a suite stands and its ETA; `--pack FILE` carries the folder
to another machine (restore: `tar xzf FILE -C DIR`); `--save DIR` also keeps the finished runs
without their weights in DIR/carry/, which `--restore DIR` writes back on another machine (`carry`).
`--steps distill` runs only the distillations (every teacher's targets while its weights are here). `--time-plan GPU` prints each step's estimated
seconds on one such GPU (assumed rates, unmeasured), `--time-plan cpu` on this CPU (its timed matmul
rate); the ETA printed before each step is that plan, corrected by the steps timed so far.

Suites (sizes stated in results.md):
  cpu-small  Gemma 3 270M, LoRA; SFT/SOFT on 128 training samples for 2 epochs (effective batch 16),
             validation on 32, test on the first 100 of the 1000 prepared test samples; classic models
             on the whole training pool, at most 50 epochs. Hours on 2 CPU cores. Intervals are wide:
             this scale checks that everything runs and shows magnitudes; it cannot detect SOFT's effect.
  cpu-medium #15's CPU answer on amazon-books and amazon-industrial: SFT on 1024 training samples for up
             to 7 epochs (early stopping on 256 validation samples), SOFT with the alpha sweep (1, 10,
             100) capped at 4 epochs, SOFT-sd-only, SASRec and GRU4Rec, all 1000 test samples. ~8-12 h
             of machine time a dataset on a 2-core AMX Xeon, about twice that on AVX2-only CPUs
             (`--time-plan cpu` prices it on yours); run it with --background, across sessions.
  gpu        the reference protocol: 4096/512/1000 samples, 7 epochs (SFT and SOFT), effective batch
             256, bf16, the alpha sweep (1, 10, 100), 5-shot ICL, classic models with their defaults.
             Runs unchanged on one GPU or several (--launcher "torchrun --nproc_per_node N").
  gpu-10min  amazon-books' BIGRec rows (SFT + the sweep) at the reference data sizes, SOFT capped at 4
             epochs: what the time plan fits into one 10-minute call on one H200 (docs/scaling.md).
  smoke      the tiny random model on the built-in demo data, a few minutes: checks an install, nothing more.

This module is the command; its parts: `suites` (suites and methods), `planning` (the commands, in
order), `execution` (running them, DIR/steps.json), `results` (collecting metrics, intervals, gains) and
`report` (results.md, results.png, saved predictions), `pack` (--pack: the folder in one file,
to resume on another machine) and `carry` (--save's carry/ and --restore: the runs without weights).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from softrec.bench.quality.carry import CARRY, restore, save_carry
from softrec.bench.quality.execution import StepLog, execute, run_in_background, status, suite_lock
from softrec.bench.quality.pack import pack
from softrec.bench.quality.planning import STEP_KINDS, plan
from softrec.bench.quality.report import curves_plot, markdown, plot, save_predictions
from softrec.bench.quality.results import collect
from softrec.bench.quality.study import study_plot
from softrec.bench.quality.suites import (
    GROUNDING,
    METHODS,
    SPLIT,
    STUDY_PATTERN,
    SUITES,
    alpha_method,
    known,
)
from softrec.bench.quality.timeplan import RunPlan, describe
from softrec.config import EvalConfig
from softrec.errors import UserError
from softrec.preflight import GPU_FLOPS

# ---- CLI -------------------------------------------------------------------------------------------

def _methods(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if not known(v)]
    if unknown or not chosen:
        raise UserError(f"--methods: unknown {unknown or value!r}; choose from {', '.join(METHODS)} or {STUDY_PATTERN}")
    return chosen


def _teacher_adapters(values: list[str], datasets: list[str]) -> dict[tuple[str, int], Path]:
    adapters = {}
    for value in values:
        dataset, _, rest = value.partition(":")
        epoch, _, folder = rest.partition("=")
        if not (dataset and epoch.isdigit() and int(epoch) > 0 and folder):
            raise UserError(f"--teacher-adapter {value!r}: expected DATASET:E=DIR, e.g. amazon-books:1=/path/to/adapter")
        if dataset not in datasets:
            raise UserError(f"--teacher-adapter {value!r}: {dataset!r} is not one of the datasets ({', '.join(datasets)})")
        if not (Path(folder) / "adapter_config.json").is_file():
            raise UserError(f"--teacher-adapter {value!r}: {folder} has no adapter_config.json (not a peft adapter folder)")
        adapters[(dataset, int(epoch))] = Path(folder).resolve()
    return adapters


def _kinds(value: str) -> set[str]:
    kinds = {v.strip() for v in value.split(",") if v.strip()}
    if not kinds or kinds - set(STEP_KINDS):
        raise UserError(f"--steps: unknown {sorted(kinds - set(STEP_KINDS)) or value!r}; choose from {', '.join(STEP_KINDS)}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="cpu-small", choices=sorted(SUITES))
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs and results.{json,md,png}")
    parser.add_argument("--datasets", help="comma-separated subset (default: the suite's: ml-100k, amazon-books, "
                        "amazon-industrial), looked up like `softrec data prepare --dataset`")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)} (default: the suite's), "
                        f"and {STUDY_PATTERN}")
    parser.add_argument("--teacher-adapter", action="append", default=[], metavar="DATASET:E=DIR",
                        help="study rows soft-tE-*: SFT's epoch E on DATASET is the peft adapter in DIR (for an "
                        "SFT run that does not keep RUN/epochs/epoch-E); repeatable")
    parser.add_argument("--model", help="LLM backbone instead of the suite's (registry name or HF dir)")
    parser.add_argument("--launcher", default="", help="prefix for LLM training/evaluation, e.g. "
                        "'torchrun --nproc_per_node 4' (runs `... -m softrec ...`)")
    parser.add_argument("--save", type=Path, help="also copy results.{json,md,png} to this folder "
                        "(e.g. benchmarks/results/quality-cpu-small-DATE)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    parser.add_argument("--time-plan", metavar="DEVICE", choices=[*sorted(GPU_FLOPS), "cpu"],
                        help="print every step's estimated seconds and stop: on one such GPU (assumed rates, never "
                        "measured) or on this CPU ('cpu': a timed matmul and the preflight's fitted factors); "
                        "softrec.bench.quality.timeplan")
    parser.add_argument("--background", action="store_true",
                        help="lowest CPU priority for the suite and its steps (nice 19, and the Linux autogroup's: "
                        "nice alone yields nothing to other terminals' work there); start it with setsid")
    parser.add_argument("--status", action="store_true",
                        help="run nothing: each step finished (its time), part-trained or to run, and the ETA")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the results from the finished rows in --out")
    parser.add_argument("--pack", type=Path, metavar="FILE",
                        help="run nothing: write FILE (tar.gz) with what resuming --out on another machine needs "
                        "(steps, data, finished rows, each run's newest checkpoint); restore it with "
                        "`tar xzf FILE -C OUT` on the same --out path")
    parser.add_argument("--restore", type=Path, action="append", default=[], metavar="SAVED",
                        help="first write back the finished runs (no weights) that a --save folder keeps in "
                        "SAVED/carry/, where --out lacks them, so the suite goes on without redoing them on another "
                        "machine; into the same --out path; repeatable")
    parser.add_argument("--steps", metavar="KINDS", help="run only the plan's steps of these kinds (comma-separated: "
                        f"{', '.join(STEP_KINDS)}), e.g. distill: every teacher's targets while its weights are here")
    parser.set_defaults(func=run)


def _steps_in_order(steps: list, log: StepLog, datasets: list[str]) -> list[dict]:
    """The finished steps in the order they run (steps.json is stored with sorted keys), then any the
    plan no longer has."""
    order = {step.command: index for index, step in enumerate(steps)}
    done = [(command, info) for command, info in log.done.items() if info["dataset"] in datasets]
    return [{"command": command, **info} for command, info in sorted(done, key=lambda c: order.get(c[0], len(order)))]


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import shutil

    from softrec.bench import machine
    from softrec.runs import atomic_write_json, atomic_write_text

    suite = SUITES[args.suite]
    if args.model:
        suite = dataclasses.replace(suite, model=args.model)
    # any NAME or DIR `softrec data prepare --dataset` resolves is a dataset; no fixed list to check against
    datasets = [d.strip() for d in (args.datasets or "").split(",") if d.strip()] or list(suite.datasets)
    methods = _methods(args.methods) if args.methods else list(suite.methods or METHODS)
    if suite.alphas and "soft" in methods:
        methods[methods.index("soft"):methods.index("soft") + 1] = [alpha_method(a) for a in suite.alphas]
    out = args.out.resolve()
    if args.pack:
        packed = pack(out, args.pack)
        print(f"packed {out} into {args.pack}: {packed['files']} files, {packed['linked']} stored as links to identical "
              f"ones, {packed['checkpoints_left_out']} older checkpoints left out, {packed['bytes'] / 2**20:.1f} MiB")
        return 0
    adapters = _teacher_adapters(args.teacher_adapter, datasets)
    steps = plan(suite, out, datasets, methods, shlex.split(args.launcher), adapters)
    kinds = _kinds(args.steps) if args.steps else None
    if args.time_plan:
        print(describe(steps, suite, out, datasets, args.time_plan))
        return 0
    if args.dry_run:
        print("\n".join(step.command for step in steps))
        return 0
    for saved in args.restore:
        out.mkdir(parents=True, exist_ok=True)
        with suite_lock(out):
            restored = restore(saved.resolve(), out)
        print(f"restored from {saved}: {', '.join(restored) or 'nothing (every run there is in --out already)'}"
              + ("; these runs have no weights here" if restored else ""), flush=True)
    if args.status:
        print(status(steps, out, RunPlan(steps, suite, out)()))
        return 0
    if args.background:
        print("background: " + ", ".join(run_in_background()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"softrec bench quality: {len(steps)} steps; {suite.scale()}\n  log: {out / 'bench.log'}", flush=True)
    chosen = [step for step in steps if kinds is None or step.kind in kinds]
    log = StepLog(out) if args.report_only else execute(chosen, out, env, RunPlan(steps, suite, out, record=True))
    results, averages = collect(suite, out, datasets, methods, log, resamples=args.resamples)
    if not results and kinds is not None:
        print(f"{out}: no finished evaluations to report yet")
        return 0
    if not results:
        raise UserError(f"{out}: no finished evaluations to report")
    payload = {
        "suite": dataclasses.asdict(suite), "scale": suite.scale(), "split": SPLIT, "grounding": GROUNDING,
        "num_beams": suite.setting("eval.num_beams", EvalConfig().num_beams), "out": str(out),
        "command": shlex.join(["softrec", *sys.argv[1:]]) if sys.argv and "softrec" in sys.argv[0] else
        shlex.join(["softrec", "bench", "quality", "--suite", args.suite, "--out", str(args.out)]),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "steps": _steps_in_order(steps, log, datasets),
        "results": results, "average_gains": averages,
    }
    atomic_write_json(out / "results.json", payload)
    atomic_write_text(out / "results.md", markdown(payload))
    plot(results, out / "results.png")
    for draw, name in ((curves_plot, "curves.png"), (study_plot, "study.png")):
        if draw(results, out / name) is None:
            (out / name).unlink(missing_ok=True)  # an earlier report's plot would describe other rows
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "results.md", "results.png", "curves.png", "study.png"):
            if (out / name).exists():
                shutil.copyfile(out / name, args.save / name)
        save_predictions(out, args.save, results, suite.test_limit)
        carried = save_carry(steps, out, args.save)
        print(f"kept in {args.save / CARRY} (for --restore): {', '.join(carried['runs']) or 'no finished LLM run'}")
    print(f"results: {out / 'results.md'}")
    return 0
