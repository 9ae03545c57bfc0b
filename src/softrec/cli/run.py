"""`softrec run`: the whole SOFT recipe in one command (see softrec.pipeline)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from softrec.config import GROUNDINGS, add_config_options, config_from_args
from softrec.methods import SOFT_METHODS


def demo_config_path() -> Path:
    return Path(str(resources.files("softrec") / "configs" / "demo.yaml"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="prepare -> SFT -> distill -> SOFT -> evaluate -> report, in one run directory",
        description=(
            "Run the SOFT pipeline. With no arguments: the bundled demo dataset and Gemma 3 270M, "
            "sized for ~20 minutes on 2 CPU cores (settings in softrec/configs/demo.yaml). "
            "Every stage is skipped when its artefact in --out is still valid, so rerunning resumes."
        ),
    )
    parser.add_argument("--dataset", help="dataset NAME (demo, ml-100k, amazon-books, ...) or DIR")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="pipeline directory holding data/, sft/, soft/, report/ (default runs/demo)")
    parser.add_argument("--model", help="backbone: gemma-3-270m, smollm2-135m, tiny, or a checkpoint dir")
    parser.add_argument("--method", choices=list(SOFT_METHODS),
                        help="the SOFT variant trained beside SFT (default soft)")
    parser.add_argument("--alpha", type=float, help="pace of the adaptive scheduler")
    parser.add_argument("--sweep-alpha", action="store_true",
                        help="train one SOFT run per soft.alpha_sweep value and keep the best on validation")
    parser.add_argument("--epochs", type=int, metavar="N", help="maximum epochs of SFT and SOFT (train.epochs)")
    parser.add_argument("--train-size", type=int, metavar="N", help="train windows sampled when preparing (data.train_size)")
    parser.add_argument("--valid-size", type=int, metavar="N", help="valid windows sampled when preparing (data.valid_size)")
    parser.add_argument("--test-size", type=int, metavar="N", help="test windows sampled when preparing (data.test_size)")
    parser.add_argument("--grounding", choices=list(GROUNDINGS), help="title -> items mapping (eval.grounding)")
    parser.add_argument("--num-beams", type=int, metavar="N", help="beams for evaluation (eval.num_beams, 4)")
    parser.add_argument("--seed", type=int, help="training seed (train.seed)")
    parser.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate and its refusal")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softrec.pipeline import run_pipeline

    if args.config is None and args.dataset in (None, "demo"):
        args.config = demo_config_path()
    config = config_from_args(args, {
        "data.dataset": args.dataset,
        "model.name": args.model,
        "train.method": args.method,
        "soft.alpha": args.alpha,
        "train.epochs": args.epochs,
        "data.train_size": args.train_size,
        "data.valid_size": args.valid_size,
        "data.test_size": args.test_size,
        "eval.grounding": args.grounding,
        "eval.num_beams": args.num_beams,
        "train.seed": args.seed,
    })
    from softrec.models.registry import check_name

    check_name(config.model.name)
    report = run_pipeline(config, args.out, sweep_alpha=args.sweep_alpha, preflight=not args.no_preflight)
    print(f"report: {report / 'report.md'}")
    return 0
