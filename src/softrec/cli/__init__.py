"""`softrec` command line: one entry point, one module per stage group.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its sub-command(s) and sets
`func` on the parser. A UserError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from softrec.errors import UserError

COMMAND_MODULES: list[str] = [
    "softrec.cli.bench",
    "softrec.cli.data",
    "softrec.cli.config_cmd",
    "softrec.cli.distill",
    "softrec.cli.evaluate",
    "softrec.cli.compare",
    "softrec.cli.recommend",
    "softrec.cli.export",
    "softrec.cli.run",
    "softrec.cli.report",
    "softrec.cli.train",
]


USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}


def build_parser() -> argparse.ArgumentParser:
    from softrec import __version__

    parser = argparse.ArgumentParser(
        prog="softrec",
        description="LLM-based sequential recommendation with SOFT (Self-Optimized Fine-Tuning).",
    )
    parser.add_argument("--version", action="version", version=f"softrec {__version__}")
    parser.add_argument("-q", "--quiet", dest="log_quiet", action="store_true",
                        help="only results and errors: no progress bars, no library logging")
    parser.add_argument("-v", "--verbose", dest="log_verbose", action="count", default=0,
                        help="more logging (-v: softrec info, -vv: libraries too, warnings unfiltered)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# Warnings from libraries that say nothing actionable to a softrec user (deprecations inside
# transformers/peft/torch that softrec's calls trigger); -vv shows them again.
KNOWN_WARNINGS = (
    r".*is_gradient_checkpointing.* is deprecated",
    r".*`past_key_values` is deprecated",
    r".*TypedStorage is deprecated",
    r".*torch\.utils\._pytree\._register_pytree_node is deprecated",
    r".*`resume_download` is deprecated",
    r".*The attention mask and the pad token id were not set",
    r".*Setting `pad_token_id` to `eos_token_id`",
    r".*generation flags are not valid and may be ignored",
)


def _set_verbosity(level: int) -> None:
    """-1 quiet, 0 default, 1 softrec info, 2 libraries' info and every warning. Libraries are
    configured through environment variables and `logging`, so nothing heavy is imported here."""
    import logging
    import warnings

    if level < 2:
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", {-1: "error", 0: "error", 1: "warning"}.get(level, "info"))
    if level < 0:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.basicConfig(format="softrec: %(message)s", level=logging.WARNING)
    logging.getLogger("softrec").setLevel({-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    import shlex

    args.command_line = shlex.join(["softrec", *(sys.argv[1:] if argv is None else argv)])  # for model cards
    _set_verbosity(-1 if args.log_quiet else args.log_verbose)
    if args.log_quiet and hasattr(args, "quiet"):
        args.quiet = True  # the sub-command's own progress switch (evaluate --quiet)
    try:
        result = args.func(args)
    except UserError as err:
        print(f"softrec: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        # disk full, read-only or forbidden output, a file where a directory should be: the
        # user's to fix, so one line and status 2 (stages check what they can before long work)
        if err.errno not in USER_ERRNOS:
            raise
        from softrec.runs import os_error

        print(f"softrec: error: {os_error(err.filename or 'output', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `softrec ... | head` closed the pipe: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)
