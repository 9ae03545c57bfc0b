"""`softrec bench quality|speed`: the reproducible results table and the side-by-side speed ratios."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from softrec.bench import quality, speed

    parser = subparsers.add_parser("bench", help="benchmark suites: quality table, speed ratios")
    suites = parser.add_subparsers(dest="bench", metavar="SUITE")
    suites.required = True
    quality.add_arguments(suites.add_parser(
        "quality", help="every method on the shared datasets; results.{json,md} + bar plot in --out",
        description=quality.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    speed.add_arguments(suites.add_parser(
        "speed", help="training/decoding/evaluation throughput and MFU, side by side; results in --out",
        description=speed.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
