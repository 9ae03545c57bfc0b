"""The plan: every `softrec` command a suite runs, per dataset and method, dependencies first."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from softrec.bench.quality.suites import (
    GROUNDING,
    SPLIT,
    Suite,
    alpha_method,
    alpha_of,
    sweep_twin,
    teacher_dir,
    teacher_of,
)

STEP_KINDS = ("prepare", "train-classic", "evaluate-classic", "train-llm", "distill", "evaluate-llm")


@dataclass
class PlannedStep:
    """One `softrec` command of the plan, and the file that exists once it has run."""

    kind: str  # prepare | train-classic | train-llm | distill | evaluate-llm | evaluate-classic
    dataset: str
    owner: str  # the method whose row this step's time counts towards
    argv: list[str]
    output: Path  # exists once the step has run
    launcher: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return shlex.join([*self.launcher, *(["softrec"] if not self.launcher else ["-m", "softrec"]), *self.argv])


def data_folder(out: Path, dataset: str) -> Path:
    """Where the suite prepares a dataset (`softrec data prepare --out`)."""
    return out / "data" / dataset


def eval_folder(out: Path, dataset: str, method: str, limit: int | None = None) -> Path:
    """Where a row's test evaluation lands: its metrics.json and predictions.jsonl (`limit`: the
    suite's test_limit, part of the evaluation's name)."""
    from softrec.evaluation.stage import evaluation_name

    return out / dataset / method / "eval" / evaluation_name(SPLIT, GROUNDING, limit=limit)


def last_epochs_only(argv: list[str]) -> list[str]:
    """`argv` without every `--epochs N` but the last (argparse keeps the last: the same command).
    SOFT's steps were planned as the suite's `--epochs 7` then their cap `--epochs 4` until 2026-12-07;
    `canonical_command` maps those recorded commands onto today's, so their finished steps still count."""
    earlier = [i for i, arg in enumerate(argv) if arg == "--epochs"][:-1]
    dropped = {k for i in earlier for k in (i, i + 1)}
    return [arg for i, arg in enumerate(argv) if i not in dropped]


def canonical_command(command: str) -> str:
    """A recorded step's command as today's plan writes it (see `last_epochs_only`)."""
    argv = shlex.split(command)
    canonical = last_epochs_only(argv)
    return command if canonical == argv else shlex.join(canonical)


def _sets(values: tuple[str, ...] | list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def plan(suite: Suite, out: Path, datasets: list[str], methods: list[str], launcher: list[str],
         teacher_adapters: dict[tuple[str, int], Path] | None = None) -> list[PlannedStep]:
    """Every step of every requested (dataset, method), dependencies first, each once: the headline
    rows of every dataset before the training and evaluation of any "when does SOFT help" study row
    (`teacher_of`), so that a many-hour run answers the main question on all its datasets first. A
    study row's distillation keeps its place beside its SFT run: it needs SFT's weights, which a
    change of machine loses (`--restore` carries targets, not weights).
    `teacher_adapters[(dataset, E)]`: the adapter folder of SFT's epoch E, for a study row whose SFT run
    does not keep that epoch (trained before RUN/epochs existed, or with keep_epoch_adapters off)."""
    steps: dict[str, PlannedStep] = {}
    for name in datasets:
        adapters = {epoch: path for (dataset, epoch), path in (teacher_adapters or {}).items() if dataset == name}
        for step in _DatasetPlan(suite, out, name, launcher, adapters).steps(methods):
            steps.setdefault(step.command, step)
    return sorted(steps.values(), key=_after_the_headline)  # stable: the plan's order otherwise


def _after_the_headline(step: PlannedStep) -> bool:
    return teacher_of(step.owner) is not None and step.kind != "distill"


class _DatasetPlan:
    """The steps of one dataset: a method's row pulls in what it needs (SFT teacher, SASRec items)."""

    def __init__(self, suite: Suite, out: Path, name: str, launcher: list[str], adapters: dict[int, Path]):
        self.suite, self.name, self.launcher, self.bench_out = suite, name, launcher, out
        self.adapters = adapters
        self.data, self.root = data_folder(out, name), out / name
        evaluation = ["--split", SPLIT, "--grounding", GROUNDING, "--quiet", "--no-preflight"]
        self.evaluation = evaluation + (["--limit", str(suite.test_limit)] if suite.test_limit else [])
        self.llm_eval = self.evaluation + _sets(suite.llm_sets)
        train = ["--data", str(self.data), "--model", suite.model, "--epochs", str(suite.epochs),
                 "--effective-batch", str(suite.effective_batch), "--micro-batch", str(suite.micro_batch)]
        train += ["--train-samples", str(suite.train_size)] if suite.train_size else []
        train += ["--valid-samples", str(suite.valid_size)] if suite.valid_size else []
        self.llm_train = train + _sets(suite.llm_sets)
        self.llara = ["--backbone", "llara", "--sasrec-run", str(self.root / "sasrec")]
        self.out: list[PlannedStep] = []

    def step(self, kind: str, owner: str, argv: list[str], output: Path, launcher: bool = False) -> None:
        self.out.append(PlannedStep(kind, self.name, owner, argv, output, self.launcher if launcher else []))

    def metrics(self, method: str) -> Path:
        return eval_folder(self.bench_out, self.name, method, self.suite.test_limit) / "metrics.json"

    def classic(self, method: str) -> None:
        run = self.root / method  # done: history.json, not the weights (a restored run has none)
        self.step("train-classic", method, ["train", "--method", method, "--data", str(self.data), "--out", str(run),
                                            *_sets(self.suite.classic_sets)], run / "history.json")
        self.step("evaluate-classic", method, ["evaluate", "--run-dir", str(run), "--data", str(self.data),
                                               *self.evaluation], self.metrics(method))

    def icl(self, method: str) -> None:
        shots = 0 if method == "icl-0" else self.suite.shots
        self.step("evaluate-llm", method, [
            "evaluate", "--method", "icl", "--shots", str(shots), "--model", self.suite.model, "--data", str(self.data),
            "--out", str(self.root / method), *self.llm_eval], self.metrics(method), launcher=True)

    def llm(self, method: str, train_args: list[str], teacher: str | None = None, sibling: Path | None = None) -> None:
        """Train (SOFT on `teacher`'s targets, distilled first, when given; forked from `sibling`'s epoch 1
        when given) and evaluate `method`."""
        if sibling:
            train_args = [*train_args, "--fork-from", str(sibling)]
        if teacher:
            self.step("distill", method, ["distill", "--run-dir", str(self.root / teacher), "--data", str(self.data),
                                          *_sets(self.suite.llm_sets)], self.root / teacher / "distilled.jsonl")
            train_args = [*train_args, "--distilled", str(self.root / teacher)]
        self.train_evaluate(method, train_args, soft=teacher is not None, sibling=sibling)

    def fork(self, method: str) -> Path | None:
        """The sweep's first run, which the other SOFT runs on SFT's targets fork from: their epoch 1
        (lambda 1) is its epoch 1 (`softrec.training.fork`); None for the first run itself."""
        first = alpha_method(self.suite.alphas[0]) if self.suite.alphas else None
        return self.root / first if first and method != first else None

    def study(self, method: str, epoch: int | None, rule: str) -> None:
        """A soft-t{E}-{rule} row: SFT's epoch E (or best) distilled by `rule` into a teacher run of
        its own, then SOFT at the suite's fixed study alpha on those targets."""
        teacher = self.root / teacher_dir(method)
        if epoch in self.adapters:
            weights = ["--adapter", str(self.adapters[epoch])]
        else:
            weights = ["--epoch", str(epoch)] if epoch is not None else []
        self.step("distill", method, ["distill", "--run-dir", str(self.root / "sft"), "--data", str(self.data),
                                      "--mode", rule, *weights, "--out", str(teacher), *_sets(self.suite.llm_sets)],
                  teacher / "distilled.jsonl")
        self.train_evaluate(method, ["--method", "soft", "--alpha", f"{self.suite.study_alpha:g}",
                                     "--distilled", str(teacher)], soft=True)

    def train_evaluate(self, method: str, train_args: list[str], soft: bool, sibling: Path | None = None) -> None:
        run = self.root / method
        cap = ["--epochs", str(self.suite.soft_epochs)] if soft and self.suite.soft_epochs else []
        self.step("train-llm", method, last_epochs_only(["train", *train_args, "--out", str(run), *self.llm_train, *cap]),
                  run / "history.json", launcher=True)
        # a forked run that kept the shared epoch 1 has its sibling's tensors: its evaluation is copied
        reuse = ["--reuse-from", str(sibling)] if sibling else []
        self.step("evaluate-llm", method, ["evaluate", "--run-dir", str(run), "--data", str(self.data), *reuse,
                                           *self.llm_eval], self.metrics(method), launcher=True)

    def steps(self, methods: list[str]) -> list[PlannedStep]:
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
                    self.llm(method, ["--method", "soft", "--alpha", f"{alpha_of(method):g}"], teacher="sft",
                             sibling=self.fork(method))
                elif method != "sft":
                    self.llm(method, ["--method", method], teacher="sft", sibling=self.fork(method))
            elif (teacher := teacher_of(method)) is not None:
                self.llm("sft", ["--method", "sft"])
                if (twin := sweep_twin(method, self.suite)) is not None:  # the sweep's row is this run
                    self.llm(twin, ["--method", "soft", "--alpha", f"{alpha_of(twin):g}"], teacher="sft")
                elif teacher == (None, "raw"):  # SFT's own targets, at the study alpha
                    self.llm(method, ["--method", "soft", "--alpha", f"{self.suite.study_alpha:g}"], teacher="sft")
                else:
                    self.study(method, *teacher)
            else:  # llara-sft, llara-soft: SASRec's item embeddings, projected
                self.classic("sasrec")
                self.llm("llara-sft", ["--method", "sft", *self.llara])
                if method == "llara-soft":
                    self.llm("llara-soft", ["--method", "soft", *self.llara], teacher="llara-sft")
        return self.out

