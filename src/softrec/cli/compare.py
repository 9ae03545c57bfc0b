"""`softrec compare A B`: paired bootstrap of two evaluations' per-sample metrics."""

from __future__ import annotations

import argparse
import json


def cmd_compare(args: argparse.Namespace) -> int:
    from softrec.evaluation.compare import compare_predictions, format_table, load_predictions

    diffs = compare_predictions(args.a, args.b, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps([d.to_dict() for d in diffs], indent=2))
    else:
        print(format_table(diffs, args.a, args.b, len(load_predictions(args.a))))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    cmp = subparsers.add_parser("compare", help="paired bootstrap of two evaluations' per-sample metrics")
    cmp.add_argument("a", metavar="RUN_OR_PREDICTIONS_A", help="baseline: a run directory or a predictions.jsonl")
    cmp.add_argument("b", metavar="RUN_OR_PREDICTIONS_B", help="the other evaluation, same split and samples")
    cmp.add_argument("--resamples", type=int, default=10_000, metavar="N", help="bootstrap resamples (10000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    cmp.add_argument("--json", action="store_true", help="machine-readable output")
    cmp.set_defaults(func=cmd_compare)
