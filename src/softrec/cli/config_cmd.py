"""`softrec config show [--config FILE] [--set KEY=VALUE ...]`: the resolved settings as YAML."""

from __future__ import annotations

import argparse

from softrec.config import add_config_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show the resolved configuration (defaults < --config < --set)")
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    commands.required = True
    show = commands.add_parser(
        "show", help="print the settings a command would use, as YAML (validated: mistakes exit 2)",
        description="Print defaults < --config FILE < --set KEY=VALUE, resolved and validated. "
        "--keys lists every settable key instead.",
    )
    show.add_argument("--keys", action="store_true", help="list every KEY that --set accepts, one per line")
    add_config_options(show)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from softrec.config import setting_keys

    config = config_from_args(args)
    if args.keys:
        print("\n".join(setting_keys()))
    else:
        print(config.to_yaml(), end="")
    return 0
