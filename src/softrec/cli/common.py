"""Options shared by sub-commands: --config FILE and --set KEY=VALUE overrides."""

from __future__ import annotations

import argparse
from typing import Any

from softrec.config import Config, load_config


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


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (sections: data, model, train, soft, eval)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override any setting, e.g. --set train.learning_rate=2e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Config:
    """defaults < --config < --set < dedicated flags (`flags` maps dotted keys to flag values)."""
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []), flags or {})
