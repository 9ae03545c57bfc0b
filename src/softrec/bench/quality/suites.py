"""The suites of `softrec bench quality` (sizes, models, settings) and the methods, the table's rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from softrec.config import DISTILL_MODES

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
# the paper's mean relative gain of SOFT over SFT (Tang et al. 2025, over datasets and metrics)
PAPER_MEAN_GAIN_PERCENT = 37.59
GAIN_METRICS = tuple(f"{m}@{k}" for m in ("HR", "NDCG") for k in (1, 5, 10, 20, 50))
SPLIT, GROUNDING = "test", "l2"
# "when does SOFT help?" (#15): rows soft-t{E}-{rule}, SOFT trained on the SFT run's epoch E (or best)
# as teacher with distilled-target rule `rule`; `sample` is left out, the study compares beam rules only
STUDY_RULES = tuple(mode for mode in DISTILL_MODES if mode != "sample")
STUDY_PATTERN = (f"soft-aALPHA (one run of the alpha sweep, e.g. soft-a10), soft-t{{E}}-{{rule}} (E: an epoch number "
                 f"or best; rule: {', '.join(STUDY_RULES)})")
_STUDY = re.compile(rf"soft-t(best|[1-9][0-9]*)-({'|'.join(STUDY_RULES)})")


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
    # the soft-t{E}-{rule} rows' alpha: the study holds alpha fixed so the teacher and the rule are its
    # only variables
    study_alpha: float = 1.0

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

    def setting(self, key: str, default: Any) -> Any:
        """The last `--set key=value` of the suite's (LLM, then classic) settings, else `default`."""
        values = [v.split("=", 1)[1] for v in self.llm_sets + self.classic_sets if v.startswith(f"{key}=")]
        return values[-1] if values else default

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


def teacher_of(method: str) -> tuple[int | None, str] | None:
    """A study row's teacher: (the SFT epoch, None for its best weights; the target rule); None otherwise."""
    match = _STUDY.fullmatch(method)
    if match is None:
        return None
    return (None if match[1] == "best" else int(match[1])), match[2]


def teacher_dir(method: str) -> str:
    """The folder (beside the rows) of a study row's teacher and its distilled targets: SFT's own for
    its kept weights and the raw rule (the SOFT rows' targets), a folder of its own otherwise."""
    return "sft" if teacher_of(method) == (None, "raw") else method.replace("soft-", "teacher-", 1)


def sweep_twin(method: str, suite: Suite) -> str | None:
    """The alpha-sweep row that is this study row's run: soft-tbest-raw is SOFT at the study alpha on
    SFT's own targets, so with the study alpha in the sweep it would train the same run again (~2 h a
    dataset on a CPU). A study row at SFT's best epoch by number is not known before SFT has trained."""
    if teacher_of(method) == (None, "raw") and suite.study_alpha in suite.alphas:
        return alpha_method(suite.study_alpha)
    return None


_ALPHA_ROW = re.compile(r"soft-a(?=[0-9.])[0-9]*\.?[0-9]*(e[-+]?[0-9]+)?")


def known(method: str) -> bool:
    """A table row: a method, one run of an alpha sweep (soft-a10) or a study row."""
    return method in METHODS or _ALPHA_ROW.fullmatch(method) is not None or teacher_of(method) is not None


def label(method: str) -> str:
    alpha, teacher = alpha_of(method), teacher_of(method)
    if teacher is not None:
        epoch, rule = teacher
        return f"BIGRec-SOFT teacher {'best epoch' if epoch is None else f'epoch {epoch}'}, {rule}"
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
        # the last 8 checkpoints kept (one per optimizer step, for resume); every epoch's teacher for
        # "when does SOFT help" (#15) is kept apart in RUN_DIR/epochs/epoch-N (train.keep_epoch_adapters)
        llm_sets=("train.warmup_steps=4", "train.patience=2", "train.save_total_limit=8"),
        classic_sets=("classic.epochs=100", "classic.patience=10"),
        alphas=(1.0, 10.0, 100.0),
        methods=("sasrec", "gru4rec", "sft", "soft", "soft-sd-only"),
        soft_epochs=4,
    ),
    # The reference protocol (SOFT.md sections 2, 4, 6): 4096/512/1000, at most 7 epochs for SFT and SOFT
    # alike, patience 2, the alpha sweep; generation in batches of 256 prompts (~5 GB of KV cache in
    # bf16). Time plan on one H200 (`--time-plan H200`, unmeasured): ~36 min for amazon-books, all
    # rows; its BIGRec rows alone (sft + the sweep) ~15 min, so one dataset does not fit in 10 minutes.
    "gpu": Suite(
        "gpu", ("ml-100k", "amazon-books", "amazon-industrial"), "gemma-3-270m",
        train_size=None, valid_size=None, test_limit=None, epochs=7, effective_batch=256, micro_batch=16, shots=5,
        llm_sets=("train.bf16=on", "eval.batch_size=256"),
        alphas=(1.0, 10.0, 100.0),
    ),
    # The largest plan for amazon-books that the time plan fits into one 10-minute call on one H200 with
    # the wheels' install and the GGUF's conversion (~2 min, benchmarks/device_quality.py): the reference
    # data (4096/512/1000) and SFT's 7 epochs, the BIGRec rows only, SOFT capped at 4 epochs (like
    # cpu-medium), micro-batches of 64 (dispatch-bound steps: 4x fewer than 16) and generation in batches
    # of 512 prompts (~10 GB of KV cache in bf16). Time plan: ~6.0 min, unmeasured (docs/scaling.md).
    "gpu-10min": Suite(
        "gpu-10min", ("amazon-books",), "gemma-3-270m",
        train_size=None, valid_size=None, test_limit=None, epochs=7, effective_batch=256, micro_batch=64, shots=5,
        llm_sets=("train.bf16=on", "eval.batch_size=512"),
        alphas=(1.0, 10.0, 100.0),
        methods=("sft", "soft"),
        soft_epochs=4,
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

