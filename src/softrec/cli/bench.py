"""`softrec bench quality|speed`: the reproducible results table and the side-by-side speed ratios."""

from __future__ import annotations

import argparse
import importlib

from softrec.cli.common import LazyParser


def _fill_from(module_name: str):
    """The suite's options come from its module, imported only when the suite is used (speed imports
    torch; `softrec --help` must not)."""
    def fill(parser: argparse.ArgumentParser) -> None:
        module = importlib.import_module(module_name)
        parser.description = module.__doc__
        module.add_arguments(parser)

    return fill


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmark suites: quality table, speed ratios")
    suites = parser.add_subparsers(dest="bench", metavar="SUITE", parser_class=LazyParser)
    suites.required = True
    suites.add_parser(
        "quality", help="every method on the shared datasets; results.{json,md} + bar plot in --out",
        formatter_class=argparse.RawDescriptionHelpFormatter, populate=_fill_from("softrec.bench.quality"))
    suites.add_parser(
        "speed", help="training/decoding/evaluation throughput and MFU, side by side; results in --out",
        formatter_class=argparse.RawDescriptionHelpFormatter, populate=_fill_from("softrec.bench.speed"))
