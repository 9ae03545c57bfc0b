"""Constrained decoding speed: softrec's trie decoder vs the straightforward baseline.

    .venv/bin/python benchmarks/bench_decoding.py [--model gemma-3-270m] [--prompts 30] [--beams 10]

The same prompts (the first N test windows of a shared dataset, amazon-books by default, as
Alpaca prompts over the dataset's catalogue) are decoded twice with beam search restricted to the
catalogue's titles:
- softrec: `generate_beam_ids(constrain_to=TitleTrie)`: prompts prefilled once and the KV cache
  repeated per beam, vectorised trie masking;
- baseline: plain `model.generate(prefix_allowed_tokens_fn=...)` over a Python dict trie.
Both use the same batches of prompts, and they take turns batch by batch. The script checks that every prompt's ranked output (its
beams' items, in order) is identical, prints prompts/s of each and their ratio, and ends with the
line `speedup: <ratio>`.

The measurement itself lives in `softrec.bench.speed.decoding` (`compare_decoding`), which
`softrec bench speed` runs too; this script keeps the command the committed results cite.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_windows(args: argparse.Namespace):
    """(titles, domain, [(history ids)]) from a prepared dataset, or minimally from the raw CSV."""
    from softrec.data.dataset import Domain, PreparedDataset

    if args.data:
        dataset = PreparedDataset.load(args.data)
        samples = dataset.split("test")[: args.prompts]
        return dataset.titles, dataset.domain, [s.history for s in samples]
    # amazon-books (SOFT/BIGRec sliding-window CSV): the last id of a window is the target
    raw = Path(args.dataset)
    names = json.loads((raw / "id2name4Rec.json").read_text(encoding="utf-8"))
    ids = sorted(int(k) for k in names)
    index = {item: position for position, item in enumerate(ids)}
    titles = [html.unescape(names[str(item)]) for item in ids]
    histories = []
    with (raw / "test.csv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            window = json.loads(line.split('"')[1])
            histories.append(tuple(index[i] for i in window[:-1][-10:]))
            if len(histories) == args.prompts:
                break
    return titles, Domain("book", "books", "read"), histories


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--dataset", default=str(SHARED / "amazon-books"), help="raw sliding-window dataset dir")
    parser.add_argument("--data", help="a prepared dataset dir instead (its test split)")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=5, help="prompts per generate call (both decoders)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 0 = torch's default. 1 by default: on a CPU shared with other "
                             "jobs, OpenMP threads waiting for each other swamp the difference measured")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)

    from softrec.bench import cpu_model
    from softrec.bench.speed.decoding import compare_decoding
    from softrec.bench.timing import stopwatch
    from softrec.data.prompts import build_prompt
    from softrec.inference.trie import DictTrie, TitleTrie
    from softrec.models.registry import load_backbone

    print(f"# {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"# command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"# cpu: {cpu_model()} ({os.cpu_count()} logical cpus, torch threads {torch.get_num_threads()})")
    print(f"# torch {torch.__version__}")
    model, tokenizer = load_backbone(args.model)
    titles, domain, histories = load_windows(args)
    prompts = [build_prompt([titles[i] for i in h], domain, "alpaca", tokenizer) for h in histories]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    print(f"model {args.model}; {len(prompts)} prompts ({min(lengths)}-{max(lengths)} tokens), "
          f"catalogue {len(titles)} titles ({len(set(titles))} distinct), {args.beams} beams, "
          f"batch {args.batch_size}, max {args.max_new_tokens} new tokens")

    with stopwatch() as trie_s:
        trie = TitleTrie.from_titles(tokenizer, titles)
    with stopwatch() as dict_s:
        dict_trie = DictTrie.from_titles(tokenizer, titles)
    print(f"trie build: softrec {trie_s[0]:.2f}s ({trie.num_nodes} nodes), baseline dict {dict_s[0]:.2f}s")

    comp = compare_decoding(model, tokenizer, prompts, trie, dict_trie, num_beams=args.beams,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            log=lambda m: print(m, flush=True))
    fast_s, slow_s = sum(comp.seconds["softrec"]), sum(comp.seconds["baseline"])
    print(f"example: {comp.beams['softrec'][0].texts[:3]}")
    print(f"complete catalogue titles among softrec beams: {comp.valid}/{comp.total}")
    print(f"identical ranked outputs: {comp.identical}/{len(prompts)} prompts (identical beam tokens: "
          f"{comp.identical_tokens})")
    fast_rate, slow_rate = comp.rate("softrec"), comp.rate("baseline")
    print(f"softrec:  {fast_s:8.1f}s  {fast_rate:.3f} prompts/s")
    print(f"baseline: {slow_s:8.1f}s  {slow_rate:.3f} prompts/s")
    if comp.identical != len(prompts):
        print("MISMATCH: ranked outputs differ", file=sys.stderr)
    print(f"speedup: {fast_rate / slow_rate:.2f}")
    return 0 if comp.identical == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
