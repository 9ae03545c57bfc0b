"""Options shared by sub-commands: --config FILE and --set KEY=VALUE (`softrec.config`), decoding."""

from __future__ import annotations

import argparse
from typing import Any

from softrec.config import GROUNDINGS

__all__ = ["LazyParser", "add_decoding_options"]


class LazyParser(argparse.ArgumentParser):
    """A sub-command parser whose options are added by `populate(parser)` only when the sub-command
    is parsed or its help printed, so heavy modules load only for the command that needs them."""

    def __init__(self, *args: Any, populate: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ensure(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._ensure()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure()
        return super().format_help()

    def format_usage(self) -> str:
        self._ensure()
        return super().format_usage()


def add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """--grounding, --num-beams, --exclude-history, --data: how `evaluate` and `recommend` rank."""
    parser.add_argument("--grounding", choices=list(GROUNDINGS),
                        help="; ".join(f"{name} = {what}" for name, what in GROUNDINGS.items()))
    parser.add_argument("--num-beams", type=int, help="beams (default eval.num_beams, 4)")
    parser.add_argument("--exclude-history", action="store_true",
                        help="drop the sample's history items from the ranking (off by default, as in the reference)")
    parser.add_argument("--data", metavar="PREPARED_DIR", help="prepared dataset (default: the run's)")
