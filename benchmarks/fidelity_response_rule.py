"""Re-ground recorded generations under both eval.response_rule values (#14 item 4).

Grounding embeds the generation with the FROZEN base model, so a run's recorded `generated` texts can
be re-ranked without its adapter: this prints HR@K / NDCG@K / validity per rule for each predictions
file, and checks that the recorded ranks are reproduced under the rule they were made with.

    python benchmarks/fidelity_response_rule.py PREPARED_DIR PREDICTIONS.jsonl[.gz] ... [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prepared", type=Path)
    parser.add_argument("predictions", type=Path, nargs="+")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--recorded-rule", default="first-line", help="the rule the recorded ranks used")
    args = parser.parse_args()

    import torch

    from softrec.data.dataset import PreparedDataset
    from softrec.data.prompts import strip_response
    from softrec.inference import grounding
    from softrec.metrics import aggregate, target_rank
    from softrec.models.registry import load_backbone

    torch.set_num_threads(1)
    dataset = PreparedDataset.load(args.prepared)
    titles = set(dataset.titles)
    model, tokenizer = load_backbone(args.model)
    catalogue = grounding.catalogue_embeddings(model, tokenizer, dataset, cache_key=args.model)
    for path in args.predictions:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        run_on = sum(len(r["generated"].strip().splitlines()) > 1 for r in rows)
        print(f"{path}: {len(rows)} generations, {run_on} run-ons (more than one line)")
        for rule in ("whole", "first-line"):
            queries = [strip_response(r["generated"], rule) or " " for r in rows]
            ranking = grounding.rank_by_distance(grounding.embed_texts(model, tokenizer, queries), catalogue).tolist()
            ranks = [target_rank(order, r["target"]) for order, r in zip(ranking, rows, strict=True)]
            metrics = aggregate(ranks, [1, 5, 10, 20, 50])
            validity = sum(q in titles for q in queries) / len(rows)
            shown = "  ".join(f"{k}={metrics[k]:.4f}" for k in ("HR@5", "HR@10", "HR@20", "HR@50", "NDCG@10"))
            line = f"  {rule:10s} {shown}  validity={validity:.3f}"
            if rule == args.recorded_rule:
                same = sum(a == r["target_rank"] for a, r in zip(ranks, rows, strict=True))
                line += f"  (recorded ranks reproduced: {same}/{len(rows)})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
