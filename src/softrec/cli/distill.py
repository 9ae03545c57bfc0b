"""`softrec distill --run-dir SFT_RUN_DIR --data PREPARED_DIR`: SOFT's self-distillation stage.

    softrec distill --run-dir SFT_RUN --data DIR                          # the best adapter -> SFT_RUN/distilled.jsonl
    softrec distill --run-dir SFT_RUN --data DIR --epoch 2 --out TEACHER  # epoch 2's adapter -> TEACHER/distilled.jsonl
    softrec distill --run-dir SFT_RUN --data DIR --adapter CKPT --out TEACHER   # any peft adapter folder
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softrec.config import DISTILL_MODES, add_config_options, config_from_args
from softrec.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="generate self-distilled targets with a trained SFT run (SOFT stage 2)",
        description="Run the SFT model over every training input and store its top-beam generations.",
    )
    parser.add_argument("--run-dir", "--run", dest="run", required=True, type=Path, metavar="RUN_DIR",
                        help="the SFT run directory")
    parser.add_argument("--data", required=True, type=Path, metavar="PREPARED_DIR", help="prepared dataset directory")
    parser.add_argument("--mode", choices=list(DISTILL_MODES),
                        help="; ".join(f"{name} = {text}" for name, text in DISTILL_MODES.items()))
    parser.add_argument("--num-beams", "--beams", dest="beams", type=int, metavar="N",
                        help="beam width (soft.distill_beams, reference 4)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="soft.distill_max_new_tokens (reference 64)")
    parser.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate and its refusal")
    teacher = parser.add_argument_group("another teacher than the run's best weights (needs --out)")
    source = teacher.add_mutually_exclusive_group()
    source.add_argument("--epoch", type=int, metavar="N",
                        help="the run's adapter after epoch N (RUN_DIR/epochs/epoch-N, train.keep_epoch_adapters)")
    source.add_argument("--adapter", type=Path, metavar="DIR",
                        help="any peft adapter folder (e.g. RUN_DIR/checkpoints/checkpoint-S)")
    teacher.add_argument("--out", type=Path, metavar="TEACHER_DIR",
                         help="a teacher run directory: a copy of the adapter, run.json with its provenance and "
                         "distilled.jsonl (then: softrec train --method soft --distilled TEACHER_DIR); "
                         "alone: the run's best weights")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softrec.data.dataset import PreparedDataset
    from softrec.data.subsets import training_samples
    from softrec.inference.distill import distill

    if args.out is None and (args.epoch is not None or args.adapter is not None):
        flag = "--epoch" if args.epoch is not None else "--adapter"
        raise UserError(f"{flag} needs --out TEACHER_DIR: targets of another adapter never go into the SFT run {args.run}")
    saved = args.run / "config.yaml"
    if args.config is None and saved.exists():
        args.config = saved  # decode with the settings the SFT run was trained with
    config = config_from_args(args, {
        "soft.distill_mode": args.mode,
        "soft.distill_beams": args.beams,
        "soft.distill_max_new_tokens": args.max_new_tokens,
    })
    dataset = PreparedDataset.load(args.data)
    teacher = args.run
    if args.out is not None:
        from softrec.runs import teacher_run

        teacher = teacher_run(args.run, args.out, epoch=args.epoch, adapter=args.adapter)
    from softrec.preflight import preflight_generation

    preflight_generation(config, dataset, len(training_samples(dataset, config)), stage="distill", skip=args.no_preflight,
                         num_beams=config.soft.distill_beams, max_new_tokens=config.soft.distill_max_new_tokens)
    path = distill(teacher, dataset, config)
    print(f"self-distilled targets: {path}")
    return 0
