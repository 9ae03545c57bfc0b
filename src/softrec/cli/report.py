"""`softrec report DIR`: rebuild a pipeline run's report from its artefacts."""

from __future__ import annotations

import argparse
from pathlib import Path

from softrec.config import GROUNDINGS
from softrec.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="rebuild OUT/report from a `softrec run` directory")
    parser.add_argument("out", type=Path, metavar="DIR", help="the --out directory of `softrec run`")
    parser.add_argument("--grounding", default="l2", choices=list(GROUNDINGS),
                        help="which full test evaluation (eval/test-<grounding>) to report (default l2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softrec.report import build_report

    runs = {p.name: p for p in sorted(args.out.iterdir()) if (p / "run.json").exists()} if args.out.is_dir() else {}
    if not runs:
        raise UserError(f"{args.out}: no run directories (with run.json) inside; expected a `softrec run --out` directory")
    report = build_report(args.out, runs, grounding=args.grounding)
    print(f"report: {report / 'report.md'}")
    return 0
