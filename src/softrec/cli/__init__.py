"""`softrec` command line: one entry point, one module per stage group.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its sub-command(s) and sets
`func` on the parser. A UserError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from softrec.errors import UserError

# Stages appear here only once they exist.
COMMAND_MODULES: list[str] = [
    "softrec.cli.bench",
    "softrec.cli.data",
    "softrec.cli.config_cmd",
    "softrec.cli.distill",
    "softrec.cli.evaluate",
    "softrec.cli.export",
    "softrec.cli.run",
    "softrec.cli.report",
    "softrec.cli.train",
]


def build_parser() -> argparse.ArgumentParser:
    from softrec import __version__

    parser = argparse.ArgumentParser(
        prog="softrec",
        description="LLM-based sequential recommendation with SOFT (Self-Optimized Fine-Tuning).",
    )
    parser.add_argument("--version", action="version", version=f"softrec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as err:
        print(f"softrec: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("softrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `softrec ... | head` closed the pipe: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)
