"""`softrec train`: SFT / SOFT of an LLM backbone, or a classic baseline, into a run directory.

    softrec train --method sft --data PREPARED_DIR --model gemma-3-270m --out RUN_DIR [--epochs N]
    softrec train --method soft --distilled SFT_RUN_DIR --alpha 1 --data PREPARED_DIR --out RUN_DIR
    softrec train ... --resume          # continue RUN_DIR from its last checkpoint

Works unchanged under `torchrun` / `accelerate launch` (the Trainer runs DDP).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from softrec.config import add_config_options, config_from_args
from softrec.errors import UserError
from softrec.methods import CLASSIC_METHODS, LLM_METHODS, METHODS, SOFT_METHODS, is_soft


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an LLM recommender (SFT, SOFT variants) or a classic baseline",
        description="Train on a prepared dataset; weights, logs, history and checkpoints go to --out.",
    )
    parser.add_argument("--method", choices=[*LLM_METHODS, *CLASSIC_METHODS], default=None,
                        help=", ".join(f"{n} ({METHODS[n].help})" if n in ("sft", "soft") else n
                                       for n in (*LLM_METHODS, *CLASSIC_METHODS))
                        + " (default: train.method, i.e. sft)")
    parser.add_argument("--data", required=True, type=Path, metavar="PREPARED_DIR",
                        help="prepared dataset (softrec data prepare)")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="gemma-3-270m (default), smollm2-135m, tiny, or a local HF checkpoint")
    parser.add_argument("--backbone", choices=["bigrec", "llara"],
                        help="bigrec: titles only (default); llara: each history title followed by its "
                        "projected SASRec item embedding (model.backbone)")
    parser.add_argument("--sasrec-run", type=Path, metavar="RUN_DIR",
                        help="llara: SASRec run on the same data (default: train one into OUT/sasrec)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (reference 7)")
    parser.add_argument("--seed", type=int, help="training seed (reference 42)")
    parser.add_argument("--train-samples", type=int, metavar="N",
                        help="train on a seeded subset of N prepared train samples (train.train_samples; default all)")
    parser.add_argument("--valid-samples", type=int, metavar="N",
                        help="validate on a seeded subset of N prepared valid samples (train.valid_samples; default all)")
    # --train-size/--valid-size mean one thing everywhere: windows sampled when a dataset is prepared
    parser.add_argument("--train-size", "--valid-size", dest="prepare_size", metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--num-beams", type=int, metavar="N", help="beams when decoding the validation split (eval.num_beams, 4)")
    parser.add_argument("--micro-batch", type=int, metavar="N", help="samples per forward pass")
    parser.add_argument("--effective-batch", type=int, metavar="N", help="samples per optimizer step (reference 256)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    parser.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate and its refusal")
    soft = parser.add_argument_group("SOFT methods")
    soft.add_argument("--distilled", type=Path, metavar="SFT_RUN_DIR",
                      help="SFT run holding distilled.jsonl (softrec distill)")
    soft.add_argument("--alpha", type=float, help="pace of the adaptive curriculum (soft.alpha)")
    soft.add_argument("--fork-from", type=Path, metavar="SOFT_RUN_DIR",
                      help="take epoch 1 (lambda 1, the same for every alpha and sd-only) from this SOFT run on the same "
                      "targets and settings instead of training it again; from the start when it kept no fork-point/")
    add_config_options(parser)
    parser.set_defaults(func=run)


# LLM-only flags: refused for sasrec/gru4rec rather than silently ignored (their settings: classic.*)
_LLM_ONLY_FLAGS = {
    "model": "--model", "backbone": "--backbone", "sasrec_run": "--sasrec-run", "train_samples": "--train-samples",
    "valid_samples": "--valid-samples", "micro_batch": "--micro-batch", "effective_batch": "--effective-batch",
    "full": "--full", "distilled": "--distilled", "num_beams": "--num-beams", "alpha": "--alpha", "no_preflight": "--no-preflight",
    "fork_from": "--fork-from",
}


def _classic_flags(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """--epochs and --seed mean the same for a classic method (classic.epochs, classic.seed); the
    LLM-only flags are refused with the setting to use instead."""
    given = [flag for dest, flag in _LLM_ONLY_FLAGS.items() if getattr(args, dest, None) not in (None, False)]
    if given:
        raise UserError(f"{', '.join(given)}: not used by --method {method} (a classic recommender); "
                        "its settings are classic.* (`softrec config show`), e.g. --set classic.batch_size=128")
    return {"train.method": method, "classic.epochs": args.epochs, "classic.seed": args.seed}


def run(args: argparse.Namespace) -> int:
    if args.prepare_size is not None:
        raise UserError("--train-size/--valid-size set how many windows `softrec data prepare` (or `softrec run`) "
                        "samples; to train or validate on a subset of the prepared samples use "
                        "--train-samples N / --valid-samples N")
    method = args.method
    if method is None:  # the method may come from --config/--set: resolve it first
        method = config_from_args(args).train.method
    if method in CLASSIC_METHODS:
        from softrec.baselines import train_classic

        config = config_from_args(args, _classic_flags(args, method))
        print(f"{method}: {train_classic(config, _dataset(args.data), args.out, resume=args.resume)}")
        return 0
    config = config_from_args(args, {
        "train.method": args.method,
        "model.name": args.model,
        "model.backbone": args.backbone,
        "model.llara_sasrec_run": str(args.sasrec_run.resolve()) if args.sasrec_run else None,
        "train.epochs": args.epochs,
        "train.seed": args.seed,
        "train.train_samples": args.train_samples,
        "train.valid_samples": args.valid_samples,
        "train.micro_batch": args.micro_batch,
        "eval.num_beams": args.num_beams,
        "train.effective_batch": args.effective_batch,
        "train.lora.enabled": False if args.full else None,
        "soft.alpha": args.alpha,
    })
    from softrec.config import check_trackers
    from softrec.models.registry import check_name

    check_name(config.model.name)
    check_trackers(config.train.report_to)
    dataset = _dataset(args.data)
    distilled = _distilled_targets(config, args, dataset)
    from softrec.evaluation.validation import validator_for
    from softrec.preflight import preflight_train
    from softrec.training.trainer import train_llm

    preflight_train(config, dataset, skip=args.no_preflight, distilled=distilled)

    info = {"command": getattr(args, "command_line", None)}
    if distilled is not None:
        info["distilled_from"] = str(args.distilled.resolve())
    if args.fork_from is not None and distilled is None:
        raise UserError("--fork-from is only for the SOFT methods: SFT's epoch 1 is no SOFT run's")
    result = train_llm(config, dataset, args.out, resume=args.resume, distilled=distilled,
                       validator=validator_for(config, dataset), info=info, fork_from=args.fork_from)
    best = "" if result.best_metric is None else f" ({config.train.selection_metric} {result.best_metric:.4f})"
    state = "reused finished run" if result.reused else f"{len(result.history)} epochs" + (
        ", stopped early" if result.stopped_early else "")
    print(f"{method}: {state}; best epoch {result.best_epoch}{best}; weights in {result.weights_dir}")
    return 0


def _dataset(path: Path) -> Any:
    from softrec.data.dataset import PreparedDataset

    if not path.is_dir():
        raise UserError(f"--data {path}: no such directory (prepare one with `softrec data prepare`)")
    return PreparedDataset.load(path)


def _distilled_targets(config: Any, args: argparse.Namespace, dataset: Any) -> dict[str, str] | None:
    """The self-distilled targets the SOFT methods train on (none for sft); the method's curriculum
    is built by the training stage itself."""
    method = config.train.method
    if not is_soft(method):
        if args.distilled is not None:
            raise UserError(f"--distilled is only for the SOFT methods ({', '.join(SOFT_METHODS)})")
        return None
    if args.distilled is None:
        raise UserError(f"--method {method} needs --distilled SFT_RUN_DIR (an SFT run after `softrec distill`)")
    from softrec.inference.distill import load_distilled

    return load_distilled(args.distilled, dataset)
