"""`softrec recommend --run-dir RUN --history TITLE_OR_ID ...`: rank catalogue items for one history."""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from softrec.cli.common import add_decoding_options
from softrec.config import add_config_options
from softrec.errors import UserError


def resolve_items(entries: Sequence[str], titles: Sequence[str]) -> list[int]:
    """Titles (exact, then case-insensitive) or item ids -> ids; unknown -> UserError with close matches."""
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    for item_id, title in enumerate(titles):
        exact.setdefault(title, item_id)
        folded.setdefault(title.casefold(), item_id)
    ids = []
    for entry in entries:
        if entry in exact:
            ids.append(exact[entry])
        elif entry.casefold() in folded:
            ids.append(folded[entry.casefold()])
        elif entry.strip().isdigit() and int(entry) < len(titles):
            ids.append(int(entry))
        else:
            close = difflib.get_close_matches(entry, titles, n=3, cutoff=0.5)
            hint = ("; close matches: " + ", ".join(repr(c) for c in close)) if close else ""
            raise UserError(f"--history: {entry!r} is neither a catalogue title nor an item id{hint}")
    return ids


def cmd_recommend(args: argparse.Namespace) -> int:
    from softrec.data.dataset import Sample
    from softrec.evaluation.stage import rank_run, run_config, run_dataset, run_info

    run_dir = Path(args.run)
    info = run_info(run_dir)
    flags = {"eval.grounding": args.grounding, "eval.num_beams": args.num_beams,
             "eval.exclude_history": True if args.exclude_history else None}
    config = run_config(run_dir, args.config, args.overrides, flags)
    dataset = run_dataset(args.data, info)
    history = resolve_items(args.history, dataset.titles)
    sample = Sample("recommend", "cli", tuple(history), -1)
    config.eval.top_n = max(args.k, 1)
    prediction = rank_run(run_dir, info, dataset, [sample], config, progress=False).predictions[0]
    items = [{"rank": r + 1, "item_id": i, "title": dataset.titles[i]}
             for r, i in enumerate(prediction["ranked"][: args.k])]
    if args.json:
        print(json.dumps({"history": history, "generated": prediction["generated"], "items": items},
                         indent=2, ensure_ascii=False))
        return 0
    if prediction["generated"]:
        print(f"generated: {prediction['generated']}")
    print(f"{'rank':>4}  {'item':>6}  title")
    for row in items:
        print(f"{row['rank']:>4}  {row['item_id']:>6}  {row['title']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    rec = subparsers.add_parser("recommend", help="rank catalogue items for a history of titles or ids")
    rec.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR", required=True,
                     help="trained run directory (--run is an alias)")
    rec.add_argument("--history", nargs="+", required=True, metavar="TITLE_OR_ID",
                     help="the user's items, oldest first: catalogue titles or item ids")
    rec.add_argument("-k", type=int, default=10, help="items to show")
    rec.add_argument("--json", action="store_true", help="machine-readable output")
    add_decoding_options(rec)
    add_config_options(rec)
    rec.set_defaults(func=cmd_recommend)
