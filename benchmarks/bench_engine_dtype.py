"""The engine in fp32 vs bf16 on this CPU, side by side: which dtype `eval.dtype=auto` should pick.

    .venv/bin/python benchmarks/bench_engine_dtype.py --data PREPARED [--adapter DIR] [--prompts 32]
        [--repeats 2] [--plain] [--out DIR]

The same test prompts and model + adapter (as bench_generation.py loads them) are decoded by
`generate_beam_ids` in float32 and in bfloat16, alternating run by run so that load from other
processes hits both alike. Prints each dtype's prompts/s (median over the repeats), their ratio
and how many top beams the two dtypes share; writes results.json / results.md to --out.
With --plain it also decodes with plain `generate` (peft adapter unmerged) in fp32 at batch 8 and in
bf16 at batches 8 and 1, and prints how many top beams each pair of decodings shares. Plain bf16 at
batch 8 against batch 1 is bf16's own floor: how often the same model and weights give another top
beam when only the batch (padding, matmul shapes) changes. No engine can match bf16 `generate` more
closely than that floor (#13's >= 98% target).
Why: bf16 autocast pays for training on AMX CPUs, but decoding runs small matmuls (rows = batch x
beams) where AMX may not beat AVX-512 fp32, and bf16 top beams drift from fp32 `generate`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from bench_generation import add_model_arguments, load_model, prepared, split_prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"],
                        help="whose windows to prompt with (train: the prompts self-distillation decodes)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--work", default="/tmp/softrec-bench-generation")
    parser.add_argument("--plain", action="store_true", help="also plain generate: fp32 b8, bf16 b8 and b1")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(args.work).mkdir(parents=True, exist_ok=True)

    from softrec.bench import machine
    from softrec.inference.generate import generate_beam_ids, generate_plain

    dataset = prepared(args)
    model, tokenizer = load_model(args)
    prompts = split_prompts(dataset, tokenizer, args.split, args.prompts)
    dtypes = ("float32", "bfloat16")
    seconds: dict[str, list[float]] = {d: [] for d in dtypes}
    beams: dict[str, list] = {}
    for repeat in range(args.repeats):
        for dtype in dtypes:
            start = time.perf_counter()
            beams[dtype] = generate_beam_ids(model, tokenizer, prompts, num_beams=args.beams,
                                             max_new_tokens=args.max_new_tokens, dtype=dtype)
            seconds[dtype].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}: {dtype} {seconds[dtype][-1]:.1f} s", flush=True)
    rate = {d: len(prompts) / statistics.median(s) for d, s in seconds.items()}
    if args.plain:
        import copy

        settings = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
        for dtype, batch in (("float32", 8), ("bfloat16", 8), ("bfloat16", 1)):
            twin = model if dtype == "float32" else copy.deepcopy(model).to(torch.bfloat16)
            start = time.perf_counter()
            beams[f"plain-{dtype}-b{batch}"] = generate_plain(twin, tokenizer, prompts, batch_size=batch, **settings)
            print(f"plain {dtype} batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
            del twin
    names = list(beams)

    def shared(a: str, b: str) -> int:
        return sum(x.token_ids[0] == y.token_ids[0] for x, y in zip(beams[a], beams[b], strict=True))

    agreement = {f"{a} vs {b}": shared(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    for pair, count in agreement.items():
        print(f"identical top beams, {pair}: {count}/{len(prompts)}")
    same = agreement["float32 vs bfloat16"]
    info = {**machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"), "threads": torch.get_num_threads()}
    results = {
        "machine": info, "command": "python benchmarks/bench_engine_dtype.py " + shlex.join(sys.argv[1:]),
        "settings": {"model": args.model, "adapter": args.run or args.adapter or "seeded LoRA", "prompts": len(prompts), "split": args.split,
                     "beams": args.beams, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats},
        "seconds": seconds, "prompts_per_s": rate, "bf16_over_fp32": rate["bfloat16"] / rate["float32"],
        "identical_top_beams": same, "identical_top_beams_by_pair": agreement,
    }
    summary = (f"float32 {rate['float32']:.3f} prompts/s, bfloat16 {rate['bfloat16']:.3f} prompts/s "
               f"(bf16/fp32 {results['bf16_over_fp32']:.2f}x); identical top beams {same}/{len(prompts)}")
    print(summary)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "results.md").write_text(
            f"# Engine dtype: fp32 vs bf16\n\n`{results['command']}`\n\n{info['date']} on {info.get('cpu_model')} "
            f"({info['threads']} threads), commit {info.get('git_commit') or '?'}.\n\n{summary}; seconds per run "
            f"{json.dumps(seconds)}.\n\nIdentical top beams by pair (engine = `float32`/`bfloat16`): "
            f"{json.dumps(agreement)}.\n\nSettings: {json.dumps(results['settings'])}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
