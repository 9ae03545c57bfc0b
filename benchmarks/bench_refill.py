"""The engine with and without refilling finished slots, side by side on the same prompts and adapter.

    .venv/bin/python benchmarks/bench_refill.py --data PREPARED --adapter ADAPTER_DIR \
        [--split train] [--prompts 192] [--batch 32]

Prints prompts/s of each, `identical top beams: K/N` and, as its last line, `refill speedup: X`.
Refilling matters on long runs (distillation over the training set, evaluation, validation), where
every batch of 32 prompts otherwise ends as a few rows that read the whole model per step.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared dataset directory")
    parser.add_argument("--adapter", help="a peft adapter folder on --model (default: the bare model)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--split", default="train", choices=["train", "valid", "test"])
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from softrec.bench import machine
    from softrec.data.dataset import PreparedDataset
    from softrec.data.prompts import sample_prompt
    from softrec.inference.generate import generate_beam_ids
    from softrec.models.registry import load_backbone

    dataset = PreparedDataset.load(args.data)
    model, tokenizer = load_backbone(args.model)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
    prompts = [sample_prompt(dataset, s, "alpaca", tokenizer) for s in dataset.split(args.split)[: args.prompts]]
    print(f"machine: {machine().get('cpu_model')}; {len(prompts)} {args.split} prompts, batches of {args.batch}")
    seconds, tops = {}, {}
    for refill in (False, True):
        start = time.perf_counter()
        beams = generate_beam_ids(model, tokenizer, prompts, num_beams=4, max_new_tokens=64, batch_size=args.batch,
                                  refill=refill)
        seconds[refill] = time.perf_counter() - start
        tops[refill] = [b.token_ids[0] for b in beams]
        print(f"refill={refill}: {seconds[refill]:.1f} s, {len(prompts) / seconds[refill]:.3f} prompts/s", flush=True)
    same = sum(a == b for a, b in zip(tops[False], tops[True], strict=True))
    print(f"identical top beams: {same}/{len(prompts)}")
    print(f"refill speedup: {seconds[False] / seconds[True]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
