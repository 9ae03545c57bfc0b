"""Options shared by sub-commands: --config FILE and --set KEY=VALUE overrides."""

from __future__ import annotations

import argparse
from typing import Any

from softrec.config import Config, load_config


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
