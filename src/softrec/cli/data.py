"""`softrec data prepare|stats|prompt|download`: raw files -> a prepared dataset, its statistics, and
the exact training text of a sample."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from softrec.config import add_config_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare datasets (filter, window, split, sample) and show their statistics",
        description="Turn raw interaction logs into SOFT training/evaluation samples.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    prepare = commands.add_parser(
        "prepare", help="build a prepared-dataset directory from a dataset NAME or DIR",
        description="A NAME (demo, ml-100k, amazon-books, ...) is looked up under $SOFTREC_DATA_DIR "
        "(default ../shared/data when present), then among the downloadable sources; demo is built "
        "in; a DIR (or a MovieLens .zip) is read directly. Reuses OUT when inputs and settings match.",
    )
    prepare.add_argument("--dataset", help="NAME or DIR (default: data.dataset, i.e. demo)")
    prepare.add_argument("--out", required=True, type=Path, help="prepared-dataset directory to write")
    prepare.add_argument("--format", help="reader: recbole, windows, d3, amazon2023, grouplens, csv (default: detect)")
    for flag, help_text in (("train", "reference 4096"), ("valid", "reference 512"), ("test", "reference 1000")):
        prepare.add_argument(f"--{flag}-size", metavar="N", help=f"sampled {flag} windows, or 'all' ({help_text})")
    prepare.add_argument("--k-core", type=int, metavar="K", help="iterative K-core on users and items (reference 10; 0 = off)")
    prepare.add_argument("--history-len", type=int, metavar="N", help="history items per window (reference 10)")
    prepare.add_argument("--stride", type=int, metavar="N", help="targets between windows (reference 1)")
    prepare.add_argument("--split", choices=["time", "loo"], help="global time split (reference) or leave-one-out")
    prepare.add_argument("--seed", type=int, help="sampling seed (reference 42)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if OUT is reusable")
    add_config_options(prepare)
    prepare.set_defaults(func=run_prepare)

    stats = commands.add_parser("stats", help="print the statistics table of a prepared dataset")
    stats.add_argument("path", type=Path, metavar="DIR", help="prepared-dataset directory")
    stats.set_defaults(func=run_stats)

    prompt = commands.add_parser(
        "prompt", help="print the exact text the model is trained on for one sample",
        description="Prints the sample's prompt, its response (the quoted target title) and the end-of-"
        "sequence marker, byte for byte as training reads them, so prompts can be checked before training. "
        "With --model the text is the model's own tokens decoded (its BOS, any history truncation to "
        "model.max_length, and its real end token); without it the end token is shown as <eos>.",
    )
    prompt.add_argument("path", type=Path, metavar="DIR", help="prepared-dataset directory")
    prompt.add_argument("--split", default="train", choices=["train", "valid", "test", "train_full"],
                        help="which split the sample comes from (default train)")
    prompt.add_argument("--index", type=int, default=0, metavar="I", help="sample index in the split (default 0)")
    prompt.add_argument("--model", metavar="NAME_OR_PATH", help="tokenize with this backbone (e.g. gemma-3-270m, tiny)")
    add_config_options(prompt)
    prompt.set_defaults(func=run_prompt)

    download = commands.add_parser("download", help="download a public dataset by name into the cache")
    download.add_argument("name", help="ml-100k, amazon2023-video-games, amazon2023:<Category>, ...")
    download.add_argument("--cache", type=Path, help="cache root (default $SOFTREC_CACHE/datasets)")
    download.set_defaults(func=run_download)


def _size(value: str | None, flag: str) -> int | str | None:
    """'all' -> the YAML null override; N -> int; None -> unset."""
    from softrec.errors import UserError

    if value is None:
        return None
    if value.lower() in ("all", "none"):
        return "all"
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--{flag}-size: expected a positive integer or 'all', got {value!r}")
    return int(value)


def run_prepare(args: argparse.Namespace) -> int:
    from softrec.data.protocol import prepare_dataset

    flags: dict[str, Any] = {
        "data.dataset": args.dataset, "data.format": args.format, "data.k_core": args.k_core,
        "data.history_len": args.history_len, "data.stride": args.stride, "data.split": args.split,
        "data.seed": args.seed,
    }
    for split in ("train", "valid", "test"):
        size = _size(getattr(args, f"{split}_size"), split)
        if size == "all":
            args.overrides = [*args.overrides, f"data.{split}_size=null"]
        else:
            flags[f"data.{split}_size"] = size
    config = config_from_args(args, flags)
    start = time.perf_counter()
    # progress is for people at a terminal; errors stay the only stderr line in scripts and tests
    log = (lambda msg: print(f"softrec: {msg}", file=sys.stderr)) if sys.stderr.isatty() else None
    dataset = prepare_dataset(config.data, args.out, force=args.force, log=log)
    print(format_stats(dataset.stats(), dataset.path))
    print(f"prepared dataset: {dataset.path} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from softrec.data.dataset import PreparedDataset

    dataset = PreparedDataset.load(args.path)
    print(format_stats(dataset.stats(), dataset.path))
    return 0


def run_prompt(args: argparse.Namespace) -> int:
    from softrec.data.dataset import PreparedDataset
    from softrec.errors import UserError

    dataset = PreparedDataset.load(args.path)
    samples = dataset.split(args.split)
    if not 0 <= args.index < len(samples):
        raise UserError(f"--index {args.index}: the {args.split} split has {len(samples)} samples (0..{len(samples) - 1})")
    config = config_from_args(args, {"model.name": args.model})
    sys.stdout.write(training_text(dataset, samples[args.index], config, tokenizer_name=args.model) + "\n")
    return 0


def training_text(dataset: Any, sample: Any, config: Any, tokenizer_name: str | None = None) -> str:
    """The text training reads for `sample`: prompt + response + end marker (see `softrec data prompt`)."""
    from softrec.data.prompts import build_prompt, response_text

    if tokenizer_name is None:
        titles = [dataset.titles[i] for i in sample.history]
        prompt = build_prompt(titles, dataset.domain, config.model.template)
        return prompt + response_text(dataset.titles[sample.target]) + "<eos>"
    from softrec.models.registry import load_backbone
    from softrec.training.batches import encode_sample

    tokenizer = load_backbone(tokenizer_name)[1]
    encoded = encode_sample(sample, dataset, tokenizer, template=config.model.template,
                            max_length=config.model.max_length)
    return tokenizer.decode(encoded.prompt_ids + encoded.real_ids, skip_special_tokens=False)


def run_download(args: argparse.Namespace) -> int:
    from softrec.data.download import fetch

    print(fetch(args.name, cache=args.cache))
    return 0


def format_stats(stats: dict[str, Any], path: Path | None = None) -> str:
    """The stats table: counts after filtering, before filtering, what was dropped, splits."""
    before = stats.get("before_filtering", {})
    windows = stats.get("windows", {})
    lines = [f"dataset {stats.get('name', '?')} ({stats.get('format', '?')})" + (f" at {path}" if path else "")]
    rows = [("", "after filtering", "before filtering")]
    for key in ("users", "items", "interactions"):
        rows.append((key, f"{stats.get(key, 0):,}", f"{before.get(key, 0):,}" if key in before else "-"))
    raw_windows = before.get("windows")
    if isinstance(raw_windows, dict):  # pre-windowed sources count per published split
        raw_windows = sum(raw_windows.values())
    rows.append(("windows", f"{sum(windows.values()):,}", f"{raw_windows:,}" if raw_windows is not None else "-"))
    rows.append(("", "", ""))
    rows.append(("split", "samples", "windows (before sampling)"))
    for split in ("train", "valid", "test"):
        hist = stats.get("history_length", {}).get(split, {})
        detail = f"{windows.get(split, 0):,}  history {hist.get('min', 0)}-{hist.get('max', 0)}, mean {hist.get('mean', 0)}"
        rows.append((split, f"{stats.get(split, 0):,}", detail))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines += ["  " + "  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    dropped = {k: v for k, v in stats.get("dropped", {}).items() if v}
    lines.append("  dropped: " + (", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())) or "nothing"))
    duplicates = stats.get("duplicate_titles", [])
    if duplicates:
        lines.append(f"  duplicate titles: {len(duplicates)} item(s) renamed with a suffix (see duplicate_of)")
    lines += [f"  note: {note}" for note in stats.get("notes", [])]
    return "\n".join(lines)
