"""The one table of methods: what `--method NAME` (and a run.json's `method`) is.

Every stage asks this table instead of testing names: the config schema (`train.method` choices),
`softrec train` (which trainer), the SOFT curriculum (which scheduler), the pipeline and preflight
(which SOFT variant), the evaluation (how a run is ranked). Stdlib only: it sits at the bottom.

| method | kind | SOFT scheduler | self-distilled targets |
| --- | --- | --- | --- |
| sft | llm | - | no |
| soft | llm | adaptive (the reference) | yes |
| soft-sd-only | llm | sd-only | yes |
| soft-fixed | llm | fixed | yes |
| soft-linear | llm | linear | yes |
| sasrec, gru4rec | classic | - | no |
| icl | icl (evaluation only: the untuned LLM with a few-shot prompt) | - | no |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["llm", "classic", "icl"]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    help: str
    scheduler: str | None = None  # the SOFT curriculum's scheduler (None: lambda is 0, plain SFT)

    @property
    def distilled(self) -> bool:
        """Trains on the SFT run's self-distilled targets (the SOFT methods)."""
        return self.scheduler is not None

    @property
    def trainable(self) -> bool:
        return self.kind != "icl"


# SOFT's curriculum schedulers by name (their formulas: training/curriculum.py SCHEDULERS)
SCHEDULERS: dict[str, str] = {
    "adaptive": "lambda_t = min(exp(alpha * (d_{t-1} / d_0 - 1)), 1) (the reference)",
    "sd-only": "lambda = 1 throughout (the paper's 'w/o SA' ablation)",
    "fixed": "a constant lambda (soft.fixed_lambda)",
    "linear": "1 at epoch 1 down to 0 at the last epoch",
}

# the schedulers that decode SOFT's probe set to measure distances d_k (before training, after every epoch)
PROBED_SCHEDULERS = frozenset({"adaptive"})

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "llm", "tuning-only"),
    Method("soft", "llm", "reference curriculum", scheduler="adaptive"),
    Method("soft-sd-only", "llm", "self-distilled targets only", scheduler="sd-only"),
    Method("soft-fixed", "llm", "fixed lambda", scheduler="fixed"),
    Method("soft-linear", "llm", "linear lambda", scheduler="linear"),
    Method("sasrec", "classic", "SASRec"),
    Method("gru4rec", "classic", "GRU4Rec"),
    Method("icl", "icl", "guidance-only baseline with the untuned model"),
)}

TRAIN_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.trainable)
LLM_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.kind == "llm")
SOFT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.distilled)
CLASSIC_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.kind == "classic")
DEFAULT_SOFT = "soft"


def method(name: str) -> Method:
    """The table's entry for `name` (KeyError for an unknown name: the config schema refuses those)."""
    return METHODS[name]


def scheduler_name(name: str, configured: str) -> str:
    """The curriculum scheduler a method runs: its own (soft-sd-only, ...) or the configured one."""
    return method(name).scheduler or configured


def is_classic(name: str | None) -> bool:
    entry = METHODS.get(name or "")
    return entry is not None and entry.kind == "classic"


def is_soft(name: str | None) -> bool:
    entry = METHODS.get(name or "")
    return entry is not None and entry.distilled


def soft_variant(name: str) -> str:
    """The SOFT method a pipeline trains beside SFT: `name` when it is one, else the reference."""
    return name if is_soft(name) else DEFAULT_SOFT

