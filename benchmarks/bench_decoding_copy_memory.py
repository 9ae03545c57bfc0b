"""Memory of the bf16 decoding copy: softrec's `decoding_model` vs copying the fp32 model first.

    .venv/bin/python benchmarks/bench_decoding_copy_memory.py [--model gemma-3-270m]

On a CPU that computes bf16 natively (AMX, AVX512-BF16) an fp32 LoRA model decodes from a merged bf16
copy (validation, the SOFT probe, distillation, evaluation). Two ways to make it, each in a fresh
process on the same model (the default LoRA, non-zero B matrices, every weight page touched first as
in a training process):
- straightforward: `copy.deepcopy(model).merge_and_unload().to(torch.bfloat16)`, which is what softrec
  did until 2026-12-07: a full fp32 copy on the way;
- softrec: `decoding_model(model, torch.bfloat16)`: LoRA merged in place, each weight copied once,
  cast, the merge undone.
Printed per way: the process's RSS before, its high-water mark while the copy exists, and its RSS
once the copy is freed (what glibc keeps), all in GiB; then the ratio of the peak increases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

WAYS = ("straightforward", "softrec")


def _rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(way: str, model_name: str) -> dict[str, float]:
    """In this (fresh) process: RSS before, peak with the copy alive, RSS after it is freed."""
    import copy

    import torch

    from softrec.config import load_config
    from softrec.hardware import peak_memory_gib
    from softrec.inference.generate import decoding_model
    from softrec.models.registry import load_backbone
    from softrec.training.trainer import prepare_model

    model, _ = load_backbone(model_name)
    model = prepare_model(model, load_config(values={"model.name": model_name}))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
            parameter.add_(0)  # every page resident, as in a training process
    model.eval()
    before = _rss_gib()
    with contextlib.ExitStack() as stack:
        if way == "straightforward":
            twin = copy.deepcopy(model).merge_and_unload().to(torch.bfloat16)
        else:
            twin = stack.enter_context(decoding_model(model, torch.bfloat16))
        peak = peak_memory_gib()["rss"]
        del twin
    return {"before": before, "peak": peak, "after": _rss_gib()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model)))
        return 0
    from softrec.bench import describe, machine

    print(f"# {' '.join(sys.argv)}\n# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {describe(machine())}")
    grown = {}
    for way in WAYS:
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", way],
                              check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        grown[way] = row["peak"] - row["before"]
        print(f"{way:>15}: RSS before {row['before']:.2f}, peak {row['peak']:.2f} (+{grown[way]:.2f}), "
              f"after {row['after']:.2f} (+{row['after'] - row['before']:.2f} kept) GiB")
    print(f"peak increase softrec / straightforward: {grown['softrec'] / grown['straightforward']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
