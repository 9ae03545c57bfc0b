"""Peak memory and wall time of LLM training and decoding under glibc's default malloc, with a fixed
mmap threshold (MALLOC_MMAP_THRESHOLD_), and with another allocator preloaded: the trade-off, measured.

    .venv/bin/python benchmarks/bench_malloc_threshold.py --data PREPARED_DIR [--workload train|evaluate] \
        [--model gemma-3-270m] [--train-samples 96] [--micro-batch 4] [--test-samples 48] \
        [--thresholds 0,128] [--allocators jemalloc,tcmalloc] [--repeats 1]

Thresholds in KiB; 0 is glibc's default (its dynamic threshold). Allocators by name, LD_PRELOADed from
the system (Debian: `apt-get install libjemalloc2 libtcmalloc-minimal4`; no PyPI wheel ships them).

Why: in cpu-medium's SOFT runs (2-core AMD EPYC Zen 4, 2-minute samples of /proc/PID/smaps) the
training process's RSS climbed step by step and the growth sat in the main malloc arena ([heap]: 4.2
GiB after a few steps, 8.2 GiB 15 minutes later), not in live tensors. glibc raises its mmap threshold
each time a large mapped block is freed (up to 32 MiB), so after the first steps every activation
below 32 MiB comes from the heap, which micro-batches of varying padded length fragment and which only
shrinks from its top. A fixed threshold keeps such blocks in their own mappings, handed back when freed,
at the price of mapping (and the kernel zeroing) fresh pages for each of them.

What: each variant runs in a fresh process with MALLOC_MMAP_THRESHOLD_ or LD_PRELOAD set in its
environment (as a user would), variants interleaved (A B A B ...) so that other load falls on all
alike. Peak RSS is the kernel's high-water mark (`softrec.hardware.peak_memory_gib`; the 2026-12-07
result sampled RSS every 0.2 s instead); at the end the child reads the [heap] mapping's RSS (glibc's
main arena; tcmalloc grows the same brk heap, jemalloc maps its own arenas and leaves it near 0) and
checks that a preloaded allocator is really mapped; the wall time is the command's.
- train: `softrec train` SFT, one epoch, no validation.
- evaluate: `softrec evaluate` of the untuned backbone (ICL, zero-shot, beam search) on the first
  --test-samples test prompts: decoding as validation, distillation and evaluation do it.
Prints medians and ratios to the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "MALLOC_MMAP_THRESHOLD_"
ALLOCATORS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}  # sonames for LD_PRELOAD


def heap_rss_gib() -> float:
    """The main arena's resident size: the [heap] mapping's Rss in /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith("[heap]")
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def child(cli_args: list[str], report: Path) -> int:
    """One `softrec` command in this process; writes its peak RSS, final [heap] RSS and wall time."""
    import time

    from softrec.cli import main
    from softrec.hardware import peak_memory_gib

    preload = os.environ.get("LD_PRELOAD", "")
    if preload and preload not in Path("/proc/self/maps").read_text():  # ld.so only warns when it fails
        raise SystemExit(f"bench_malloc_threshold: {preload} was not preloaded")
    start = time.perf_counter()
    code = main(["-q", *cli_args])
    seconds = time.perf_counter() - start
    report.write_text(json.dumps({"peak_rss_gib": peak_memory_gib()["rss"], "heap_gib": heap_rss_gib(),
                                  "seconds": seconds}))
    return code


def command(args: argparse.Namespace, out: Path) -> list[str]:
    if args.workload == "evaluate":
        return ["evaluate", "--method", "icl", "--shots", "0", "--model", args.model, "--data", args.data,
                "--out", str(out), "--split", "test", "--limit", str(args.test_samples), "--no-preflight"]
    return ["train", "--method", "sft", "--data", args.data, "--out", str(out), "--model", args.model,
            "--epochs", "1", "--train-samples", str(args.train_samples), "--micro-batch", str(args.micro_batch),
            "--effective-batch", str(args.micro_batch * 4), "--no-preflight",
            "--set", "train.validate_every_epoch=false", "--set", "train.warmup_steps=1"]


def variant_env(variant: str) -> dict[str, str]:
    """The environment of one variant: a threshold in KiB (0: glibc's default) or an allocator's name."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")} | {"HF_HUB_OFFLINE": "1"}
    if variant in ALLOCATORS:
        env["LD_PRELOAD"] = ALLOCATORS[variant]
    elif variant != "0":
        env[ENV] = str(int(variant) << 10)
    return env


def variant_name(variant: str) -> str:
    if variant in ALLOCATORS:
        return f"LD_PRELOAD={ALLOCATORS[variant]}"
    return "glibc default" if variant == "0" else f"{ENV}={int(variant) << 10} ({variant} KiB)"


def check_allocators(names: list[str]) -> None:
    """Exit 2 with one line when an allocator is unknown or not installed, before any run starts (looked
    up, not loaded: jemalloc cannot be dlopen()ed into a running process, only preloaded)."""
    import ctypes.util

    for name in names:
        problem = (f"unknown {name!r} (known: {', '.join(ALLOCATORS)})" if name not in ALLOCATORS else
                   None if ctypes.util.find_library(ALLOCATORS[name][3:].split(".so")[0]) else
                   f"{ALLOCATORS[name]} is not installed (Debian: apt-get install libjemalloc2 libtcmalloc-minimal4)")
        if problem:
            print(f"bench_malloc_threshold: --allocators: {problem}", file=sys.stderr)
            sys.exit(2)


def run_child(args: argparse.Namespace, work: Path, name: str, variant: str) -> dict[str, float]:
    out, report = work / f"run-{name}", work / f"report-{name}.json"
    env = variant_env(variant)
    subprocess.run([sys.executable, __file__, "--child", str(report), "--out", str(out), *sys.argv[1:]],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # the trainer logs to stdout
    return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared dataset folder (softrec data prepare --out)")
    parser.add_argument("--workload", choices=("train", "evaluate"), default="train")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--train-samples", type=int, default=96)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--test-samples", type=int, default=48)
    parser.add_argument("--thresholds", default="0,128", help="comma-separated KiB; 0: glibc's default")
    parser.add_argument("--allocators", default="", help="comma-separated, LD_PRELOADed: " + ", ".join(ALLOCATORS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(command(args, args.out), args.child)

    from softrec.bench import describe, machine

    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    check_allocators(allocators)
    variants = [t.strip() for t in args.thresholds.split(",") if t.strip()] + allocators
    measured: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for variant in variants:
                measured[variant].append(run_child(args, Path(work), f"{repeat}-{variant}", variant))
    what = {"train": f"SFT, {args.train_samples} samples, micro-batch {args.micro_batch}, 1 epoch, no validation",
            "evaluate": f"evaluate (ICL zero-shot, beam search), {args.test_samples} test prompts"}[args.workload]
    print(f"# {' '.join(sys.argv)}\n# {describe(machine())}\n# {what}, {args.repeats} run(s) per variant, medians")
    base = variants[0]

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in measured[variant])

    for variant in variants:
        print(f"{variant_name(variant):44s} peak RSS {median(variant, 'peak_rss_gib'):5.2f} GiB "
              f"(x{median(variant, 'peak_rss_gib') / median(base, 'peak_rss_gib'):.2f})  "
              f"[heap] at the end {median(variant, 'heap_gib'):5.2f} GiB  "
              f"wall {median(variant, 'seconds'):6.1f} s (x{median(variant, 'seconds') / median(base, 'seconds'):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
