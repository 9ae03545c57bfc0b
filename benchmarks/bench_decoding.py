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
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def ranked_items(trie, beams) -> list[list[int]]:
    """Per prompt, the items of its complete beams in beam order (what trie grounding ranks)."""
    out = []
    for b in beams:
        seen: list[int] = []
        for ids in b.token_ids:
            seen += [i for i in trie.items_for(ids) if i not in seen]
        out.append(seen)
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


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

    from softrec.data.prompts import build_prompt
    from softrec.inference.generate import generate_baseline, generate_beam_ids
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

    trie, trie_s = timed(lambda: TitleTrie.from_titles(tokenizer, titles))
    dict_trie, dict_s = timed(lambda: DictTrie.from_titles(tokenizer, titles))
    print(f"trie build: softrec {trie_s:.2f}s ({trie.num_nodes} nodes), baseline dict {dict_s:.2f}s")

    settings = dict(num_beams=args.beams, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    # warm-up (allocator, kernels) on one prompt, not timed
    generate_beam_ids(model, tokenizer, prompts[:1], **{**settings, "max_new_tokens": 2}, constrain_to=trie)
    generate_baseline(model, tokenizer, prompts[:1], **{**settings, "max_new_tokens": 2}, trie=dict_trie)

    # The two decoders take turns batch by batch (alternating which goes first), so that load from
    # other processes on a shared machine falls on both alike. Batches: prompts sorted by length,
    # as generate_beam_ids itself would batch them.
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    fast: list = [None] * len(prompts)
    slow: list = [None] * len(prompts)
    fast_s = slow_s = 0.0
    runs = {
        "softrec": lambda batch: generate_beam_ids(model, tokenizer, batch, **settings, constrain_to=trie),
        "baseline": lambda batch: generate_baseline(model, tokenizer, batch, **settings, trie=dict_trie),
    }
    for number, indices in enumerate(batches):
        batch = [prompts[i] for i in indices]
        for name in (("softrec", "baseline") if number % 2 == 0 else ("baseline", "softrec")):
            beams, seconds = timed(lambda name=name, batch=batch: runs[name](batch))
            target = fast if name == "softrec" else slow
            for index, b in zip(indices, beams, strict=True):
                target[index] = b
            if name == "softrec":
                fast_s += seconds
            else:
                slow_s += seconds
            print(f"  batch {number + 1}/{len(batches)} {name:8s} {seconds:7.1f}s", flush=True)
    fast_ranked, slow_ranked = ranked_items(trie, fast), ranked_items(trie, slow)
    same = sum(a == b for a, b in zip(fast_ranked, slow_ranked, strict=True))
    same_tokens = sum(a.token_ids == b.token_ids for a, b in zip(fast, slow, strict=True))
    valid = sum(bool(trie.items_for(ids)) for b in fast for ids in b.token_ids)
    total = sum(len(b.token_ids) for b in fast)
    print(f"example: {fast[0].texts[:3]}")
    print(f"complete catalogue titles among softrec beams: {valid}/{total}")
    print(f"identical ranked outputs: {same}/{len(prompts)} prompts (identical beam tokens: {same_tokens})")
    fast_rate, slow_rate = len(prompts) / fast_s, len(prompts) / slow_s
    print(f"softrec:  {fast_s:8.1f}s  {fast_rate:.3f} prompts/s")
    print(f"baseline: {slow_s:8.1f}s  {slow_rate:.3f} prompts/s")
    if same != len(prompts):
        print("MISMATCH: ranked outputs differ", file=sys.stderr)
    print(f"speedup: {fast_rate / slow_rate:.2f}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
