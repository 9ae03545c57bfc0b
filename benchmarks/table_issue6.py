"""Issue 6's comparison table: ICL (zero- and few-shot), SASRec, GRU4Rec, BIGRec-SFT and LLaRA-SFT
on the SAME test samples of one prepared dataset, as one Markdown + JSON table with the exact commands.

    .venv/bin/python benchmarks/table_issue6.py --data PREPARED_DIR --out OUT_DIR \\
        [--model gemma-3-270m] [--shots 5] [--limit N] [--epochs 7] [--train-size N] [--valid-size N] \\
        [--systems icl-0,icl-k,sasrec,gru4rec,bigrec-sft,llara-sft] [--save NAME] [--dry-run]

Every system is run through the `softrec` CLI exactly as a user would (the commands in the table are
the ones that ran), each into OUT_DIR/<system>. Training and evaluation reuse finished, valid work,
so an interrupted table resumes where it stopped. LLaRA-SFT reads the item embeddings of the SASRec
row's run (`--sasrec-run OUT_DIR/sasrec`), i.e. the SASRec trained on the same prepared data.
All rows are evaluated with the same split, `--limit`, grounding and decoding settings; the script
checks that their predictions cover the same sample ids before writing the table.

Smoke test (seconds): --model tiny --limit 8 --epochs 1 --train-size 16 --valid-size 4
--classic-set classic.epochs=2 --llm-set eval.max_new_tokens=8.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("icl-0", "icl-k", "sasrec", "gru4rec", "bigrec-sft", "llara-sft")
METRICS = ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "validity")


@dataclass
class Row:
    system: str
    label: str
    run_dir: Path
    commands: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _sets(values: list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def plan(args: argparse.Namespace) -> list[Row]:
    """The commands of every requested system, in an order that respects dependencies."""
    data, out, model = str(args.data), Path(args.out), args.model
    evaluate = ["--split", args.split, "--grounding", args.grounding, "--quiet"]
    if args.limit:
        evaluate += ["--limit", str(args.limit)]
    if args.num_beams:
        evaluate += ["--num-beams", str(args.num_beams)]
    llm_eval = evaluate + _sets(args.llm_set)
    llm_train = ["--model", model, "--epochs", str(args.epochs)]
    for flag, value in (("--train-size", args.train_size), ("--valid-size", args.valid_size),
                        ("--micro-batch", args.micro_batch), ("--effective-batch", args.effective_batch)):
        if value:
            llm_train += [flag, str(value)]
    llm_train += _sets(args.llm_set)
    classic = _sets(args.classic_set)

    def run_dir(name: str) -> Path:
        return out / name

    rows: dict[str, Row] = {}
    for shots, name in ((0, "icl-0"), (args.shots, "icl-k")):
        rows[name] = Row(name, f"ICL {shots}-shot ({model})", run_dir(name), [[
            "evaluate", "--method", "icl", "--shots", str(shots), "--model", model, "--data", data,
            "--out", str(run_dir(name)), *llm_eval]])
    for name, label in (("sasrec", "SASRec"), ("gru4rec", "GRU4Rec")):
        rows[name] = Row(name, label, run_dir(name), [
            ["train", "--method", name, "--data", data, "--out", str(run_dir(name)), *classic],
            ["evaluate", "--run", str(run_dir(name)), *evaluate]])
    rows["bigrec-sft"] = Row("bigrec-sft", f"BIGRec-SFT ({model})", run_dir("bigrec-sft"), [
        ["train", "--method", "sft", "--data", data, "--out", str(run_dir("bigrec-sft")), *llm_train],
        ["evaluate", "--run", str(run_dir("bigrec-sft")), *llm_eval]])
    rows["llara-sft"] = Row("llara-sft", f"LLaRA-SFT ({model} + SASRec)", run_dir("llara-sft"), [
        ["train", "--method", "sft", "--backbone", "llara", "--sasrec-run", str(run_dir("sasrec")),
         "--data", data, "--out", str(run_dir("llara-sft")), *llm_train],
        ["evaluate", "--run", str(run_dir("llara-sft")), *llm_eval]])
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    if "llara-sft" in wanted and "sasrec" not in wanted:
        rows["llara-sft"].commands[:0] = rows["sasrec"].commands[:1]  # its item embeddings
    return [rows[name] for name in SYSTEMS if name in wanted]


def shell(command: list[str]) -> str:
    return shlex.join(["softrec", *command])


def execute(row: Row, env: dict[str, str], log: Path) -> None:
    started = time.monotonic()
    for command in row.commands:
        print(f"$ {shell(command)}", flush=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"$ {shell(command)}\n")
            fh.flush()
            done = subprocess.run([sys.executable, "-m", "softrec", *command], env=env, cwd=ROOT,
                                  stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"{row.system}: command failed with status {done.returncode} (see {log})")
    row.seconds = round(time.monotonic() - started, 1)


def collect(row: Row, split: str, grounding: str) -> list[str]:
    """The row's metrics; returns the sample ids its predictions cover."""
    folder = row.run_dir / "eval" / f"{split}-{grounding}"
    row.metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["sample_id"] for line in lines if line.strip()]


def markdown(rows: list[Row], args: argparse.Namespace, n: int) -> str:
    shown = [m for m in METRICS if any(m in r.metrics for r in rows)]
    lines = [
        f"# Issue 6 comparison: {Path(args.data).name}",
        "",
        f"{n} `{args.split}` samples (the same for every row), full ranking over the catalogue, "
        f"LLM rows grounded with `{args.grounding}`. Generated {datetime.now(UTC).isoformat(timespec='seconds')} "
        f"on {os.cpu_count()} CPUs (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        "",
        "| system | " + " | ".join(shown) + " | seconds |",
        "|---|" + "---:|" * (len(shown) + 1),
    ]
    for row in rows:
        cells = [f"{row.metrics[m]:.4f}" if isinstance(row.metrics.get(m), int | float) else "-" for m in shown]
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {row.seconds} |")
    lines += ["", "seconds: wall time of the row's commands in this invocation (a few, when they reused "
              "finished runs).", "",
              "## Commands", "", "```sh", f"# {shlex.join([sys.executable, *sys.argv])}"]
    for row in rows:
        lines += [f"# {row.label}"] + [shell(c) for c in row.commands]
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset (softrec data prepare)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the run directories and the table")
    parser.add_argument("--model", default="gemma-3-270m", help="LLM backbone of the ICL and SFT rows")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations of the few-shot ICL row")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--limit", type=int, help="only the first N samples of the split (all rows alike)")
    parser.add_argument("--grounding", default="l2", choices=["l2", "trie", "minilm"])
    parser.add_argument("--num-beams", type=int, help="beams for the LLM rows (default eval.num_beams)")
    parser.add_argument("--epochs", type=int, default=7, help="SFT epochs (reference 7)")
    parser.add_argument("--train-size", type=int, help="SFT on a seeded subset of N train samples")
    parser.add_argument("--valid-size", type=int, help="validate SFT on a seeded subset of N samples")
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--effective-batch", type=int)
    parser.add_argument("--llm-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--set for the LLM rows' training and evaluation (repeatable)")
    parser.add_argument("--classic-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--set for SASRec/GRU4Rec training (repeatable)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of the rows")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every command")
    parser.add_argument("--save", metavar="NAME", help="also copy the table to benchmarks/results/NAME.{md,json}")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)

    rows = plan(args)
    if args.dry_run:
        for row in rows:
            print("\n".join(shell(c) for c in row.commands))
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "table_issue6.log"
    for row in rows:
        execute(row, env, log)

    samples = {row.system: collect(row, args.split, args.grounding) for row in rows}
    reference = sorted(next(iter(samples.values())))
    for system, ids in samples.items():
        if sorted(ids) != reference:
            raise SystemExit(f"{system}: its predictions cover other samples than {rows[0].system}'s")
    text = markdown(rows, args, len(reference))
    payload = {
        "dataset": str(args.data), "split": args.split, "n": len(reference), "grounding": args.grounding,
        "rows": [{"system": r.system, "label": r.label, "run_dir": str(r.run_dir), "seconds": r.seconds,
                  "metrics": r.metrics, "commands": [shell(c) for c in r.commands]} for r in rows],
    }
    targets = [args.out / "table"]
    if args.save:
        targets.append(ROOT / "benchmarks" / "results" / args.save)
    for target in targets:
        target.with_suffix(".md").write_text(text, encoding="utf-8")
        target.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {', '.join(str(t.with_suffix('.md')) for t in targets)} (+ .json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
