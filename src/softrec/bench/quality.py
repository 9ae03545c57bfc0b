"""`softrec bench quality`: every method on the shared datasets, one results table.

    softrec bench quality --suite cpu-small --out DIR [--datasets ...] [--methods ...] [--dry-run]
    softrec bench quality --suite gpu --out DIR [--launcher "torchrun --nproc_per_node 4"]

Methods: ICL zero- and few-shot (untuned backbone), SASRec, GRU4Rec, SFT, SOFT and SOFT-sd-only on
the BIGRec backbone, and SFT and SOFT on the LLaRA backbone. Every step is a `softrec` command, run
as a user would run it (the results list them verbatim), into DIR/<dataset>/<method>/. All methods of
a dataset are evaluated on the same test samples, full ranking, l2 grounding for the LLM rows.

Results: DIR/results.json (per dataset and method: the test metrics, each with its 95% bootstrap
interval, and the paired bootstrap difference against SFT), DIR/results.md (the table, the relative
gain of SOFT over SFT per dataset and metric and on average, the commands) and DIR/results.png.

Resumable: finished steps are recorded in DIR/steps.json and skipped; an interrupted step is rerun,
and `softrec train` picks up its last checkpoint (`--resume`), evaluation and distillation their
finished chunks. Suites (sizes stated in results.md):
  cpu-small  Gemma 3 270M, LoRA; SFT/SOFT on 128 training samples for 2 epochs (effective batch 16),
             validation on 32, test on the first 100 of the 1000 prepared test samples; classic models
             on the whole training pool, at most 50 epochs. Hours on 2 CPU cores. Intervals are wide:
             this scale checks that everything runs and shows magnitudes; it cannot detect SOFT's effect.
  gpu        the reference protocol: 4096/512/1000 samples, 7 epochs, effective batch 256, bf16,
             5-shot ICL, classic models with their defaults. Runs unchanged on one GPU or several
             (--launcher "torchrun --nproc_per_node N").
  smoke      the tiny random model on the built-in demo data, a few minutes: checks an install, nothing more.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softrec.config import EvalConfig
from softrec.errors import UserError

METHODS = ("sasrec", "gru4rec", "icl-0", "icl-k", "sft", "llara-sft", "soft", "soft-sd-only", "llara-soft")
LABELS = {
    "icl-0": "ICL zero-shot", "icl-k": "ICL few-shot", "sasrec": "SASRec", "gru4rec": "GRU4Rec",
    "sft": "BIGRec-SFT", "soft": "BIGRec-SOFT", "soft-sd-only": "BIGRec-SOFT-sd-only",
    "llara-sft": "LLaRA-SFT", "llara-soft": "LLaRA-SOFT",
}
# SOFT row -> the SFT row it is measured against (relative gain, paired bootstrap)
SOFT_PAIRS = {"soft": "sft", "soft-sd-only": "sft", "llara-soft": "llara-sft"}
TABLE_METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
WITH_INTERVAL = ("HR@10", "NDCG@10")  # the others' intervals are in results.json
GAIN_METRICS = tuple(f"{m}@{k}" for m in ("HR", "NDCG") for k in (1, 5, 10, 20, 50))
SPLIT, GROUNDING = "test", "l2"


@dataclass(frozen=True)
class Suite:
    name: str
    datasets: tuple[str, ...]
    model: str
    train_size: int | None  # LLM training on a seeded subset of the prepared 4096 (None = all)
    valid_size: int | None
    test_limit: int | None  # the first N of the prepared 1000 test samples (None = all)
    epochs: int
    effective_batch: int
    micro_batch: int
    shots: int
    llm_sets: tuple[str, ...] = ()
    classic_sets: tuple[str, ...] = ()
    alphas: tuple[float, ...] = ()  # SOFT's alpha sweep: one run each, the row "soft" is chosen on validation
    methods: tuple[str, ...] = ()  # the suite's default rows (empty: every method)
    soft_epochs: int | None = None  # SOFT runs' epoch cap when it differs from the teacher's

    def scale(self) -> str:
        train = self.train_size or "all 4096"
        valid = self.valid_size or "all 512"
        test = self.test_limit or "all 1000"
        return (f"suite `{self.name}`: {self.model} with LoRA; LLM training on {train} samples for at most "
                f"{self.epochs} epochs (effective batch {self.effective_batch}), validation on {valid}, "
                f"test on {test} samples per dataset; ICL few-shot with {self.shots} demonstrations; classic "
                f"models on the whole training pool; extra settings: {', '.join(self.llm_sets + self.classic_sets) or 'none'}"
                + (f"; SOFT alpha swept over {', '.join(f'{a:g}' for a in self.alphas)}, chosen on validation"
                   if self.alphas else ""))

    def rows(self) -> list[str]:
        """The suite's methods, the alpha sweep's runs in place of a single SOFT run."""
        chosen = list(self.methods or METHODS)
        if self.alphas and "soft" in chosen:
            at = chosen.index("soft")
            chosen[at:at + 1] = [alpha_method(a) for a in self.alphas]
        return chosen


def alpha_method(alpha: float) -> str:
    return f"soft-a{alpha:g}"


def alpha_of(method: str) -> float | None:
    return float(method.removeprefix("soft-a")) if method.startswith("soft-a") else None


def label(method: str) -> str:
    alpha = alpha_of(method)
    return f"BIGRec-SOFT alpha={alpha:g}" if alpha is not None else LABELS[method]


SUITES = {
    "cpu-small": Suite(
        "cpu-small", ("ml-100k", "amazon-books", "amazon-industrial"), "gemma-3-270m",
        train_size=128, valid_size=32, test_limit=100, epochs=2, effective_batch=16, micro_batch=8, shots=3,
        llm_sets=("train.warmup_steps=2", "soft.probe_size=16", "soft.distill_max_new_tokens=32",
                  "eval.max_new_tokens=32"),
        classic_sets=("classic.epochs=50", "classic.patience=5"),
    ),
    # A properly trained teacher, the alpha sweep, 1000 test samples on the two Amazon sets. Measured on
    # a 2-core AMD EPYC: training ~105 tokens/s (~32 min per epoch of 1024 samples), beam search ~2 s a
    # prompt; about 20 h of machine time per dataset, run across sessions (steps.json resumes it).
    "cpu-medium": Suite(
        "cpu-medium", ("amazon-books", "amazon-industrial"), "gemma-3-270m",
        train_size=1024, valid_size=256, test_limit=None, epochs=7, effective_batch=32, micro_batch=8, shots=3,
        # every epoch's checkpoint kept: the teachers after 1, 2, ... epochs for "when does SOFT help"
        llm_sets=("train.warmup_steps=4", "train.patience=2", "train.save_total_limit=8"),
        classic_sets=("classic.epochs=100", "classic.patience=10"),
        alphas=(1.0, 10.0, 100.0),
        methods=("sasrec", "gru4rec", "sft", "soft", "soft-sd-only"),
        soft_epochs=4,
    ),
    "gpu": Suite(
        "gpu", ("ml-100k", "amazon-books", "amazon-industrial"), "gemma-3-270m",
        train_size=None, valid_size=None, test_limit=None, epochs=7, effective_batch=256, micro_batch=16, shots=5,
        llm_sets=("train.bf16=on",),
    ),
    # a minutes-long check of an install: the tiny random model on the built-in demo; numbers meaningless
    "smoke": Suite(
        "smoke", ("demo",), "tiny",
        train_size=16, valid_size=4, test_limit=8, epochs=1, effective_batch=8, micro_batch=4, shots=2,
        llm_sets=("train.warmup_steps=0", "train.bf16=off", "soft.probe_size=4", "soft.distill_max_new_tokens=8",
                  "eval.max_new_tokens=8", "eval.num_beams=2"),
        classic_sets=("classic.epochs=2",),
    ),
}


@dataclass
class Step:
    kind: str  # prepare | train-classic | train-llm | distill | evaluate-llm | evaluate-classic
    dataset: str
    owner: str  # the method whose row this step's time counts towards
    argv: list[str]
    output: Path  # exists once the step has run
    launcher: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return shlex.join([*self.launcher, *(["softrec"] if not self.launcher else ["-m", "softrec"]), *self.argv])


def eval_folder(out: Path, dataset: str, method: str, limit: int | None = None) -> Path:
    """Where a row's test evaluation lands: its metrics.json and predictions.jsonl (`limit`: the
    suite's test_limit, part of the evaluation's name)."""
    from softrec.evaluation.stage import evaluation_name

    return out / dataset / method / "eval" / evaluation_name(SPLIT, GROUNDING, limit=limit)


def _setting(sets: tuple[str, ...], key: str, default: Any) -> Any:
    values = [v.split("=", 1)[1] for v in sets if v.startswith(f"{key}=")]
    return values[-1] if values else default


def _sets(values: tuple[str, ...] | list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def plan(suite: Suite, out: Path, datasets: list[str], methods: list[str], launcher: list[str]) -> list[Step]:
    """Every step of every requested (dataset, method), dependencies first, each once."""
    steps: dict[str, Step] = {}
    for name in datasets:
        for step in _DatasetPlan(suite, out, name, launcher).steps(methods):
            steps.setdefault(step.command, step)
    return list(steps.values())


class _DatasetPlan:
    """The steps of one dataset: a method's row pulls in what it needs (SFT teacher, SASRec items)."""

    def __init__(self, suite: Suite, out: Path, name: str, launcher: list[str]):
        self.suite, self.name, self.launcher, self.bench_out = suite, name, launcher, out
        self.data, self.root = out / "data" / name, out / name
        evaluation = ["--split", SPLIT, "--grounding", GROUNDING, "--quiet", "--no-preflight"]
        self.evaluation = evaluation + (["--limit", str(suite.test_limit)] if suite.test_limit else [])
        self.llm_eval = self.evaluation + _sets(suite.llm_sets)
        train = ["--data", str(self.data), "--model", suite.model, "--epochs", str(suite.epochs),
                 "--effective-batch", str(suite.effective_batch), "--micro-batch", str(suite.micro_batch)]
        train += ["--train-samples", str(suite.train_size)] if suite.train_size else []
        train += ["--valid-samples", str(suite.valid_size)] if suite.valid_size else []
        self.llm_train = train + _sets(suite.llm_sets)
        self.llara = ["--backbone", "llara", "--sasrec-run", str(self.root / "sasrec")]
        self.out: list[Step] = []

    def step(self, kind: str, owner: str, argv: list[str], output: Path, launcher: bool = False) -> None:
        self.out.append(Step(kind, self.name, owner, argv, output, self.launcher if launcher else []))

    def metrics(self, method: str) -> Path:
        return eval_folder(self.bench_out, self.name, method, self.suite.test_limit) / "metrics.json"

    def classic(self, method: str) -> None:
        run = self.root / method
        self.step("train-classic", method, ["train", "--method", method, "--data", str(self.data), "--out", str(run),
                                            *_sets(self.suite.classic_sets)], run / "classic.safetensors")
        self.step("evaluate-classic", method, ["evaluate", "--run-dir", str(run), "--data", str(self.data),
                                               *self.evaluation], self.metrics(method))

    def icl(self, method: str) -> None:
        shots = 0 if method == "icl-0" else self.suite.shots
        self.step("evaluate-llm", method, [
            "evaluate", "--method", "icl", "--shots", str(shots), "--model", self.suite.model, "--data", str(self.data),
            "--out", str(self.root / method), *self.llm_eval], self.metrics(method), launcher=True)

    def llm(self, method: str, train_args: list[str], teacher: str | None = None) -> None:
        run = self.root / method
        if teacher:
            self.step("distill", method, ["distill", "--run-dir", str(self.root / teacher), "--data", str(self.data),
                                          *_sets(self.suite.llm_sets)], self.root / teacher / "distilled.jsonl")
            train_args = [*train_args, "--distilled", str(self.root / teacher)]
        cap = ["--epochs", str(self.suite.soft_epochs)] if teacher and self.suite.soft_epochs else []
        self.step("train-llm", method, ["train", *train_args, "--out", str(run), *self.llm_train, *cap],
                  run / "history.json", launcher=True)
        self.step("evaluate-llm", method, ["evaluate", "--run-dir", str(run), "--data", str(self.data),
                                           *self.llm_eval], self.metrics(method), launcher=True)

    def steps(self, methods: list[str]) -> list[Step]:
        self.step("prepare", "data", ["data", "prepare", "--dataset", self.name, "--out", str(self.data)],
                  self.data / "dataset.json")
        for method in methods:
            if method in ("sasrec", "gru4rec"):
                self.classic(method)
            elif method in ("icl-0", "icl-k"):
                self.icl(method)
            elif method in ("sft", "soft", "soft-sd-only") or alpha_of(method) is not None:
                self.llm("sft", ["--method", "sft"])
                if alpha_of(method) is not None:
                    self.llm(method, ["--method", "soft", "--alpha", f"{alpha_of(method):g}"], teacher="sft")
                elif method != "sft":
                    self.llm(method, ["--method", method], teacher="sft")
            else:  # llara-sft, llara-soft: SASRec's item embeddings, projected
                self.classic("sasrec")
                self.llm("llara-sft", ["--method", "sft", *self.llara])
                if method == "llara-soft":
                    self.llm("llara-soft", ["--method", "soft", *self.llara], teacher="llara-sft")
        return self.out


# ---- running ---------------------------------------------------------------------------------------

class StepLog:
    """DIR/steps.json: finished commands and their wall times, so a rerun skips them."""

    def __init__(self, out: Path):
        self.path = out / "steps.json"
        self.done: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def finished(self, step: Step) -> bool:
        return step.command in self.done and step.output.exists()

    def mark(self, step: Step, seconds: float) -> None:
        from softrec.runs import atomic_write_json

        self.done[step.command] = {"kind": step.kind, "dataset": step.dataset, "owner": step.owner, "seconds": round(seconds, 1),
                                   "finished": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_json(self.path, self.done)


def _eta(steps: list[Step], log: StepLog, start: int) -> str:
    """Remaining time, guessed from the median finished step of the same kind."""
    by_kind: dict[str, list[float]] = {}
    for info in log.done.values():
        by_kind.setdefault(info["kind"], []).append(info["seconds"])
    known = [statistics.median(by_kind[s.kind]) for s in steps[start:] if s.kind in by_kind and not log.finished(s)]
    unknown = sum(1 for s in steps[start:] if s.kind not in by_kind and not log.finished(s))
    eta = time.strftime("%H:%M:%S", time.gmtime(sum(known)))
    return f"ETA {eta}" + (f" + {unknown} step(s) of unmeasured kind" if unknown else "")


def execute(steps: list[Step], out: Path, env: dict[str, str]) -> StepLog:
    log, logfile = StepLog(out), out / "bench.log"
    for index, step in enumerate(steps):
        prefix = f"[{index + 1}/{len(steps)}]"
        if log.finished(step):
            print(f"{prefix} done before: {step.command}", flush=True)
            continue
        argv = list(step.argv)
        if step.kind == "train-llm" and (step.output.parent / "checkpoints").exists():
            argv.append("--resume")  # an interrupted run continues from its last checkpoint
        print(f"{prefix} {time.strftime('%H:%M:%S')} {_eta(steps, log, index)}\n    $ {step.command}", flush=True)
        runner = [*step.launcher, "-m", "softrec"] if step.launcher else [sys.executable, "-m", "softrec"]
        started = time.monotonic()
        with logfile.open("a", encoding="utf-8") as fh:
            fh.write(f"\n$ {step.command}\n")
            fh.flush()
            status = subprocess.run([*runner, *argv], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise UserError(f"step failed with exit status {status}: {step.command} (output in {logfile})")
        seconds = time.monotonic() - started
        log.mark(step, seconds)
        print(f"    finished in {seconds:.0f} s", flush=True)
    return log


# ---- results ---------------------------------------------------------------------------------------

def _interval(values: Any) -> dict[str, float]:
    return {"low": float(values[0]), "high": float(values[1])}


def collect(suite: Suite, out: Path, datasets: list[str], methods: list[str], log: StepLog,
            resamples: int = 10_000) -> dict[str, Any]:
    """Per dataset and method: test metrics with 95% bootstrap intervals, paired differences vs SFT."""
    import numpy as np

    from softrec.evaluation.compare import load_predictions, metric_matrix, paired_bootstrap
    from softrec.metrics import DEFAULT_KS

    seconds: dict[tuple[str, str], float] = {}
    for info in log.done.values():
        key = (info["dataset"], info["owner"])
        seconds[key] = seconds.get(key, 0.0) + info["seconds"]
    results: dict[str, Any] = {}
    for name in datasets:
        rows: dict[str, Any] = {}
        ranks: dict[str, dict[str, int | None]] = {}
        for method in methods:
            folder = eval_folder(out, name, method, suite.test_limit)
            if not (folder / "predictions.jsonl").exists():
                continue
            ranks[method] = load_predictions(folder / "predictions.jsonl")
            rows[method] = {"label": label(method), "run_dir": str(out / name / method),
                            "seconds": round(seconds.get((name, method), 0.0), 1),
                            "summary": json.loads((folder / "metrics.json").read_text())}
        if not rows:
            continue
        ids = sorted(next(iter(ranks.values())))
        for method, method_ranks in ranks.items():
            if sorted(method_ranks) != ids:
                raise UserError(f"{out / name / method}: its predictions cover other {SPLIT} samples than "
                                f"{next(iter(ranks))}'s; rerun its evaluation with the suite's settings")
        matrices = {}
        for method, method_ranks in ranks.items():
            names, matrices[method] = metric_matrix([method_ranks[i] for i in ids], DEFAULT_KS)
        zeros = np.zeros_like(next(iter(matrices.values())))
        for method, matrix in matrices.items():
            mean, low, high, _ = paired_bootstrap(zeros, matrix, resamples=resamples)
            rows[method]["metrics"] = {n: {"value": float(mean[j]), **_interval((low[j], high[j]))}
                                       for j, n in enumerate(names)}
            baseline = SOFT_PAIRS.get(method, "sft")  # LLaRA-SOFT against LLaRA-SFT, the rest against SFT
            if baseline in matrices and method != "sft":
                diff, low, high, p = paired_bootstrap(matrices[baseline], matrix, resamples=resamples)
                rows[method]["vs_sft"] = {n: {"diff": float(diff[j]), **_interval((low[j], high[j])),
                                              "p": float(p[j])} for j, n in enumerate(names)}
                rows[method]["vs_sft_baseline"] = baseline
        for method in rows:
            rows[method]["history"] = _history(out / name / method)
        _choose_alpha(rows)
        results[name] = {"n": len(ids), "methods": rows, "gains": _gains(rows)}
    return results


def _history(run: Path) -> list[dict[str, Any]] | None:
    """Per epoch of an LLM run: validation HR@10 / NDCG@10 / validity, lambda and d_k (SOFT), best."""
    path = run / "history.json"
    if not path.exists():
        return None
    keep = ("epoch", "best", "lambda", "distance", "train_loss")
    return [{**{k: e[k] for k in keep if k in e},
             **{k: e["valid"][k] for k in ("HR@10", "NDCG@10", "validity") if k in e.get("valid", {})}}
            for e in json.loads(path.read_text(encoding="utf-8"))]


def _validation_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """A run's best epoch on validation, ordered as epoch selection orders it (HR@10, NDCG@10, validity)."""
    best = [e for e in row.get("history") or [] if e.get("best")] or [{}]
    return tuple(float(best[-1].get(k, float("-inf"))) for k in ("HR@10", "NDCG@10", "validity"))


def _choose_alpha(rows: dict[str, Any]) -> None:
    """The reported SOFT row of an alpha sweep: the run best on validation (test metrics never looked at)."""
    import copy

    sweep = [m for m in rows if alpha_of(m) is not None]
    if not sweep or "soft" in rows:
        return
    chosen = max(sweep, key=lambda m: (_validation_key(rows[m]), -sweep.index(m)))
    rows["soft"] = {**copy.deepcopy(rows[chosen]), "label": f"BIGRec-SOFT (alpha={alpha_of(chosen):g}, chosen on validation)",
                    "chosen_from": {m: _validation_key(rows[m]) for m in sweep}, "chosen": chosen}


def _gains(rows: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Relative gain (%) of each SOFT row over its SFT row, per metric (None where SFT scored 0)."""
    gains = {}
    for soft, sft in SOFT_PAIRS.items():
        if soft in rows and sft in rows:
            pair = {}
            for metric in GAIN_METRICS:
                base, value = rows[sft]["metrics"][metric]["value"], rows[soft]["metrics"][metric]["value"]
                pair[metric] = 100.0 * (value - base) / base if base > 0 else None
            gains[f"{soft}/{sft}"] = pair
    return gains


def average_gains(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's headline: the mean relative gain over datasets and metrics (defined ones only)."""
    pooled: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for dataset in results.values():
        for pair, gains in dataset["gains"].items():
            for value in gains.values():
                if value is None:
                    skipped[pair] = skipped.get(pair, 0) + 1
                else:
                    pooled.setdefault(pair, []).append(value)
    return {pair: {"mean_percent": statistics.fmean(values), "terms": len(values), "undefined": skipped.get(pair, 0)}
            for pair, values in pooled.items()}


def _cell(metric: dict[str, float] | None, interval: bool) -> str:
    if not metric:
        return "-"
    return f"{metric['value']:.4f}" + (f" [{metric['low']:.4f}, {metric['high']:.4f}]" if interval else "")


def _diff_cell(diff: dict[str, float] | None) -> str:
    if not diff:
        return "-"
    return f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] p={diff['p']:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    from softrec.bench import describe

    suite, results = payload["suite"], payload["results"]
    lines = [
        f"# softrec quality benchmark: suite `{suite['name']}`", "",
        f"Scale: {payload['scale']}.", "",
        f"Run {payload['finished']} on {describe(payload['machine'])}.", "",
        f"Full ranking over each catalogue; LLM rows generate with {payload['num_beams']}-beam search and are "
        "grounded by L2 distance (BIGRec). HR@10 and NDCG@10 cells: value [95% bootstrap interval] (all "
        "intervals are in results.json); 'vs SFT': paired bootstrap difference against BIGRec-SFT (for "
        "LLaRA-SOFT: against LLaRA-SFT) on the same samples [95% interval] and its two-sided p.",
        "",
    ]
    if suite["test_limit"] and suite["test_limit"] < 1000:
        lines += [f"**At {suite['test_limit']} test samples per dataset these intervals are wide: the table shows "
                  "that every method runs and the magnitudes; it cannot confirm or refute SOFT's claimed gain "
                  "(about 1000-2000 samples are needed at HR@10 near 0.05). Use `--suite gpu` for that.**", ""]
    for name, dataset in results.items():
        lines += [f"## {name} ({dataset['n']} test samples)", "",
                  "| method | " + " | ".join(TABLE_METRICS) + " | validity | HR@10 vs SFT | NDCG@10 vs SFT | seconds |",
                  "|---|" + "---|" * (len(TABLE_METRICS) + 4)]
        for row in dataset["methods"].values():
            cells = [_cell(row["metrics"].get(m), m in WITH_INTERVAL) for m in TABLE_METRICS]
            validity = row["summary"].get("validity")
            vs = row.get("vs_sft", {})
            lines.append(f"| {row['label']} | " + " | ".join(cells) +
                         f" | {validity if validity is None else f'{validity:.3f}'} | {_diff_cell(vs.get('HR@10'))} | "
                         f"{_diff_cell(vs.get('NDCG@10'))} | {row['seconds']:.0f} |")
        lines.append("")
    lines += _gain_lines(results, payload["average_gains"])
    lines += _history_lines(results)
    out = payload["out"]
    lines += ["## Commands", "", "```sh", f"# {payload['command']}", f"OUT={shlex.quote(out)}"]
    lines += [s["command"].replace(out, "$OUT") for s in payload["steps"]]
    lines += ["```", "", "seconds: wall time of the row's own steps (training, distillation for SOFT rows, "
              "evaluation), as recorded when they ran.", ""]
    return "\n".join(lines)


def _gain_lines(results: dict[str, Any], averages: dict[str, Any]) -> list[str]:
    found = {pair for d in results.values() for pair in d["gains"]}
    pairs = [(soft, sft) for soft, sft in SOFT_PAIRS.items() if f"{soft}/{sft}" in found]  # headline first
    if not pairs:
        return []
    lines = ["## Relative gain of SOFT over SFT (%)", "",
             "(value - SFT) / SFT x 100 per dataset and metric; the paper reports +37.59% on average. "
             "'n/a' where SFT scored 0.", ""]
    for soft, sft in pairs:
        pair = f"{soft}/{sft}"
        lines += [f"### {LABELS[soft]} vs {LABELS[sft]}", "", "| dataset | " + " | ".join(GAIN_METRICS) + " |",
                  "|---|" + "---:|" * len(GAIN_METRICS)]
        for name, dataset in results.items():
            gains = dataset["gains"].get(pair)
            if gains:
                cells = ["n/a" if gains[m] is None else f"{gains[m]:+.1f}" for m in GAIN_METRICS]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if pair in averages:
            a = averages[pair]
            lines += ["", f"Average over datasets and metrics: **{a['mean_percent']:+.1f}%** "
                      f"({a['terms']} terms, {a['undefined']} undefined)."]
        lines.append("")
    return lines


def _history_lines(results: dict[str, Any]) -> list[str]:
    """Every LLM run's validation curve (the teacher's included) and, for SOFT, lambda and d_k per epoch."""
    lines = []
    for name, dataset in results.items():
        runs = {m: r for m, r in dataset["methods"].items() if r.get("history") and m != "soft"}
        if not runs:
            continue
        lines += [f"## Validation curves: {name}", "",
                  "Per epoch: validation HR@10 / validity, and for SOFT runs lambda and d_k; * marks the kept epoch.", "",
                  "| run | " + " | ".join(f"epoch {i}" for i in range(1, 1 + max(len(r["history"]) for r in runs.values()))) + " |",
                  "|---|" + "---|" * max(len(r["history"]) for r in runs.values())]
        for row in runs.values():
            cells = []
            for e in row["history"]:
                cell = f"{e.get('HR@10', float('nan')):.4f} / {e.get('validity', float('nan')):.2f}"
                if "lambda" in e:
                    cell += f", λ {e['lambda']:.2f}" + (f", d {e['distance']:.1f}" if e.get("distance") is not None else "")
                cells.append(cell + (" *" if e.get("best") else ""))
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        if "soft" in dataset["methods"] and "chosen" in dataset["methods"]["soft"]:
            lines += ["", f"SOFT row: {dataset['methods']['soft']['chosen']} (best validation HR@10, then NDCG@10, validity)."]
        lines.append("")
    return lines


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of HR@10 and NDCG@10 per dataset and method, with their bootstrap intervals."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from softrec.runs import atomic_write_bytes

    if not results:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), squeeze=False)
    methods = list(dict.fromkeys(m for d in results.values() for m in d["methods"]))
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes[0], ("HR@10", "NDCG@10"), strict=True):
        for i, method in enumerate(methods):
            xs, ys, errs = [], [], [[], []]
            for x, dataset in enumerate(results.values()):
                row = dataset["methods"].get(method)
                if row:
                    m = row["metrics"][metric]
                    xs.append(x + (i - (len(methods) - 1) / 2) * width)
                    ys.append(m["value"])
                    errs[0].append(m["value"] - m["low"])
                    errs[1].append(m["high"] - m["value"])
            ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label(method))
        ax.set_xticks(range(len(results)), [f"{n}\n(n={d['n']})" for n, d in results.items()])
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{metric} with 95% bootstrap intervals")
    axes[0][1].legend(fontsize=7, ncols=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _save_predictions(out: Path, save: Path, results: dict[str, Any], limit: int | None) -> None:
    """Every row's per-sample predictions, gzipped, so the table can be recomputed without softrec."""
    import gzip

    folder = save / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    for name, dataset in results.items():
        for method in dataset["methods"]:
            source = eval_folder(out, name, dataset["methods"][method].get("chosen", method), limit) / "predictions.jsonl"
            if source.exists():
                # mtime 0: the same predictions give the same bytes, so a rebuilt table diffs clean
                with gzip.GzipFile(folder / f"{name}-{method}.jsonl.gz", "wb", mtime=0) as fh:
                    fh.write(source.read_bytes())


# ---- CLI -------------------------------------------------------------------------------------------

def _choice_list(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise UserError(f"{flag}: unknown {unknown or value!r}; choose from {', '.join(allowed)}")
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="cpu-small", choices=sorted(SUITES))
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs and results.{json,md,png}")
    parser.add_argument("--datasets", help="comma-separated subset (default: the suite's: ml-100k, amazon-books, "
                        "amazon-industrial), looked up like `softrec data prepare --dataset`")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--model", help="LLM backbone instead of the suite's (registry name or HF dir)")
    parser.add_argument("--launcher", default="", help="prefix for LLM training/evaluation, e.g. "
                        "'torchrun --nproc_per_node 4' (runs `... -m softrec ...`)")
    parser.add_argument("--save", type=Path, help="also copy results.{json,md,png} to this folder "
                        "(e.g. benchmarks/results/quality-cpu-small-DATE)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the results from the finished rows in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import shutil

    from softrec.bench import machine
    from softrec.runs import atomic_write_json, atomic_write_text

    suite = SUITES[args.suite]
    if args.model:
        suite = dataclasses.replace(suite, model=args.model)
    # any NAME or DIR `softrec data prepare --dataset` resolves is a dataset; no fixed list to check against
    datasets = [d.strip() for d in (args.datasets or "").split(",") if d.strip()] or list(suite.datasets)
    methods = _choice_list(args.methods, METHODS, "--methods") if args.methods else list(suite.methods or METHODS)
    if suite.alphas and "soft" in methods:
        methods[methods.index("soft"):methods.index("soft") + 1] = [alpha_method(a) for a in suite.alphas]
    out = args.out.resolve()
    steps = plan(suite, out, datasets, methods, shlex.split(args.launcher))
    if args.dry_run:
        print("\n".join(step.command for step in steps))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"softrec bench quality: {len(steps)} steps; {suite.scale()}\n  log: {out / 'bench.log'}", flush=True)
    log = StepLog(out) if args.report_only else execute(steps, out, env)
    results = collect(suite, out, datasets, methods, log, resamples=args.resamples)
    if not results:
        raise UserError(f"{out}: no finished evaluations to report")
    payload = {
        "suite": dataclasses.asdict(suite), "scale": suite.scale(), "split": SPLIT, "grounding": GROUNDING,
        "num_beams": _setting(suite.llm_sets, "eval.num_beams", EvalConfig().num_beams), "out": str(out),
        "command": shlex.join(["softrec", *sys.argv[1:]]) if sys.argv and "softrec" in sys.argv[0] else
        shlex.join(["softrec", "bench", "quality", "--suite", args.suite, "--out", str(args.out)]),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "steps": [{"command": command, **info} for command, info in log.done.items() if info["dataset"] in datasets],
        "results": results, "average_gains": average_gains(results),
    }
    atomic_write_json(out / "results.json", payload)
    atomic_write_text(out / "results.md", markdown(payload))
    plot(results, out / "results.png")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "results.md", "results.png"):
            if (out / name).exists():
                shutil.copyfile(out / name, args.save / name)
        _save_predictions(out, args.save, results, suite.test_limit)
    print(f"results: {out / 'results.md'}")
    return 0
