"""How length-grouped micro-batches change run-on distilled targets' share of the gradient (#14 item 3).

Each micro-batch's loss is the mean CE over its labelled tokens and every micro-batch weighs the same,
so a sample's share of an epoch's gradient is (its target tokens / the batch's target tokens) / batches.
This script lays out the batches of SOFT's first epoch (lambda = 1: distilled targets only) with
softrec's sampler, once grouped by length (train.group_by_length=true, mega-batches of 16) and once in
random order (reference), and prints the run-on targets' total share, averaged over epochs/seeds.

    python benchmarks/fidelity_batch_share.py PREPARED_DIR DISTILLED_JSONL[.gz] [--micro-batch 32]

PREPARED_DIR must be the dataset the distilled targets were made on; a run-on is a distilled target
with more than one line. Tokenizer: gemma-3-270m (the run's model); `--model` changes it.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prepared", type=Path)
    parser.add_argument("distilled", type=Path)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--epochs", type=int, default=20, help="sampler epochs (orders) averaged")
    args = parser.parse_args()

    from softrec.data.dataset import PreparedDataset
    from softrec.models.registry import load_backbone
    from softrec.training.batches import LengthGroupedSampler, encode_sample

    opener = gzip.open if args.distilled.suffix == ".gz" else open
    with opener(args.distilled, "rt", encoding="utf-8") as fh:
        distilled = {row["sample_id"]: row["target_text"] for row in map(json.loads, fh)}
    dataset = PreparedDataset.load(args.prepared)
    samples = [s for s in dataset.split("train") if s.sample_id in distilled]
    tokenizer = load_backbone(args.model)[1]
    encoded = [encode_sample(s, dataset, tokenizer, distilled_text=distilled[s.sample_id]) for s in samples]
    run_on = [len(distilled[s.sample_id].strip().splitlines()) > 1 for s in samples]
    target_tokens = [len(e.distilled_ids) for e in encoded]
    lengths = [e.length for e in encoded]
    print(f"{len(samples)} samples, {sum(run_on)} run-on distilled targets "
          f"({sum(t for t, r in zip(target_tokens, run_on, strict=True) if r)} of {sum(target_tokens)} target tokens); "
          f"micro-batch {args.micro_batch}")
    for name, mega in (("random (reference)", 1), ("grouped by length", 16)):
        shares = []
        for epoch in range(args.epochs):
            sampler = LengthGroupedSampler(lengths, args.micro_batch, seed=42, mega=mega)
            sampler.set_epoch(epoch)
            order = list(sampler)
            batches = [order[i:i + args.micro_batch] for i in range(0, len(order), args.micro_batch)]
            share = sum(sum(target_tokens[i] for i in b if run_on[i]) / sum(target_tokens[i] for i in b)
                        for b in batches) / len(batches)
            shares.append(share)
        mean = sum(shares) / len(shares)
        print(f"{name:20s} run-on share of the distilled gradient: {mean:.3f} "
              f"(min {min(shares):.3f}, max {max(shares):.3f} over {len(shares)} epoch orders)")


if __name__ == "__main__":
    main()
