"""`softrec evaluate`: full-ranking metrics of a run (the stage is `softrec.evaluation.stage`).

Works under `torchrun` (gloo on CPU): every rank evaluates its shard, rank 0 writes the files and
prints. Results go to RUN_DIR/eval/<split>-<grounding>[-limitN][-beamsN...][-epochN]/ (see
`evaluation_name`: the suffixes name what differs from the full evaluation) and the latest evaluation of
the kept weights is copied to RUN_DIR/metrics.json and RUN_DIR/predictions.jsonl (`--epoch N` ranks
another epoch's weights, e.g. one that early stopping did not keep, and copies nothing). A rerun with
the same settings, data and weights reuses the recorded result (manifest key) unless --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from softrec.cli.common import add_decoding_options
from softrec.config import add_config_options, config_from_args
from softrec.errors import UserError


def _eval_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "eval.grounding": args.grounding,
        "eval.num_beams": args.num_beams,
        "eval.max_new_tokens": args.max_new_tokens,
        "eval.length_penalty": args.length_penalty,
        "eval.batch_size": args.batch_size,
        "eval.exclude_history": True if args.exclude_history else None,
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    from softrec.evaluation.stage import evaluate_run, process_group, run_config, start_icl_run

    with process_group():
        if args.method == "icl":
            if not args.out or not args.data:
                raise UserError("--method icl needs --data PREPARED_DIR and --out RUN_DIR")
            run_dir = start_icl_run(Path(args.out), args.data, model=args.model, shots=args.shots, seed=args.seed,
                                    config=config_from_args(args, {"model.name": args.model}))
        elif args.run:
            run_dir = Path(args.run)
        else:
            raise UserError("--run-dir RUN_DIR is required (or --method icl with --model/--data/--out)")
        from softrec.evaluation.stage import run_info

        run_info(run_dir)  # not a run directory: refused before its settings are read
        config = run_config(run_dir, args.config, args.overrides, _eval_flags(args))
        evaluate_run(run_dir, config, data=args.data, split=args.split, limit=args.limit, force=args.force,
                     progress=not args.quiet, preflight=not args.no_preflight, reuse_from=args.reuse_from,
                     epoch=args.epoch)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("evaluate", help="full-ranking metrics of a run (HR@K, NDCG@K, validity)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --run-dir: torchrun's own parser rejects `--run` as an ambiguous prefix of its --run-path
    ev.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR",
                    help="trained run directory (--run is an alias; torchrun's parser needs --run-dir)")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to rank (default test)")
    add_decoding_options(ev)
    ev.add_argument("--max-new-tokens", type=int, metavar="N", help="eval.max_new_tokens (reference 64)")
    ev.add_argument("--length-penalty", type=float, metavar="X", help="beam-search length penalty (eval.length_penalty, 1.0)")
    ev.add_argument("--batch-size", type=int, help="prompts per generate call")
    ev.add_argument("--limit", type=int, metavar="N", help="only the first N samples of the split")
    ev.add_argument("--epoch", type=int, metavar="N",
                    help="the weights after epoch N (RUN_DIR/epochs/epoch-N) instead of the kept best; "
                         "into eval/<name>-epochN, not copied as the run's latest")
    ev.add_argument("--force", action="store_true", help="recompute even if a valid result exists")
    ev.add_argument("--reuse-from", action="append", default=[], metavar="RUN_DIR",
                    help="copy this run's evaluation (same settings) instead of recomputing it when its trained "
                         "tensors are byte-identical to RUN_DIR's own, e.g. SOFT siblings that kept their shared "
                         "epoch 1 (repeatable)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate and its refusal")
    ev.add_argument("--method", choices=["icl"], help="icl = guidance-only baseline with the untuned --model")
    ev.add_argument("--shots", type=int, default=0, help="ICL demonstrations from the train split")
    ev.add_argument("--seed", type=int, default=42, help="ICL demonstration draw")
    ev.add_argument("--model", default="gemma-3-270m", help="ICL backbone (registry name or HF dir)")
    ev.add_argument("--out", metavar="RUN_DIR", help="ICL run directory to create")
    add_config_options(ev)
    ev.set_defaults(func=cmd_evaluate)
