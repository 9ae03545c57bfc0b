"""A time plan for a suite on one GPU: every step of a dataset's plan with its estimated seconds.

UNMEASURED: no step of softrec has run on a GPU yet; these are assumptions, to size a plan before
a machine is lent (docs/scaling.md, "Quality on a lent GPU"). Each step takes the larger of two
bounds, plus the start of its `softrec` process:

- compute: the preflight FLOP model (`preflight.train_flops_per_token`, `generation_flops`) over the
  preflight GPU table's realistic bf16 rate (250 TFLOP/s on an H100/H200, 10% of it for generation);
- dispatch: eager PyTorch through transformers' modules launches every small kernel from Python, so a
  270M model cannot keep a GPU busy; a micro-batch's forward + backward and one decoding step of a
  batch take at least `Assumptions.train_step_s` / `decode_step_s`, whatever the batch.

For Gemma 3 270M the dispatch bound wins for training and small decoding batches, the FLOP bound for
decoding batches of 512 prompts (at the table's 10% generation efficiency); the rates are guesses
from typical eager step times of small models on H100-class GPUs, not readings. Upper bounds: every run goes to its epoch
cap (early stopping only shortens), untuned models decode `max_new_tokens` (64) steps a batch, trained
ones the preflight's typical 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from softrec.bench.quality.planning import PlannedStep
from softrec.bench.quality.suites import Suite
from softrec.config import ClassicConfig, EvalConfig, SoftConfig
from softrec.preflight import (
    GPU_FLOPS,
    GPU_GENERATE_EFFICIENCY,
    TYPICAL_NEW_TOKENS,
    TYPICAL_RESPONSE_TOKENS,
    BackboneShape,
    catalogue_flops,
    generation_flops,
    model_shape,
    train_flops_per_token,
)


@dataclass(frozen=True)
class Assumptions:
    """Per-step costs on one GPU, none of them measured (see the module docstring)."""

    gpu: str = "H200"
    process_s: float = 20.0  # imports, CUDA context, the 1 GB fp32 checkpoint to the GPU, the tokenizer
    prepare_s: float = 8.0  # `softrec data prepare` of amazon-books: 7.6 s measured on a 2-core AMD EPYC
    train_step_s: float = 0.08  # a micro-batch's forward + backward + LoRA, eager, dispatch-bound
    decode_step_s: float = 0.025  # one beam step of a batch: 18 eager layers, the chunked LM head, beams
    classic_step_s: float = 0.01  # a SASRec/GRU4Rec batch of 256 windows

    @property
    def train_flops(self) -> float:
        return GPU_FLOPS[self.gpu]

    @property
    def generate_flops(self) -> float:
        return GPU_FLOPS[self.gpu] * GPU_GENERATE_EFFICIENCY


@dataclass(frozen=True)
class DatasetShape:
    """What the time depends on: split sizes, the classic models' pool, catalogue, mean prompt tokens."""

    train: int
    valid: int
    test: int
    pool: int  # train_full windows (classic models)
    titles: int
    prompt_tokens: int  # preflight.prompt_tokens(mean=True): tokenizer counts (characters / 3.5 without one)

    @classmethod
    def of(cls, prepared: Path) -> DatasetShape:
        from softrec.config import load_config
        from softrec.data.dataset import PreparedDataset
        from softrec.preflight import prompt_tokens

        data = PreparedDataset.load(prepared)
        sizes = [len(data.split(s)) for s in ("train", "valid", "test", "train_full")]
        return cls(*sizes, titles=len(data.titles), prompt_tokens=prompt_tokens(data, load_config(), mean=True))


TITLE_TOKENS = 16  # a catalogue title's tokens, assumed (no tokenizer is loaded to plan)
# amazon-books as `softrec data prepare` makes it (reference sizes; read from the prepared folder)
AMAZON_BOOKS = DatasetShape(train=4096, valid=512, test=1000, pool=31163, titles=6343, prompt_tokens=194)


class _Costs:
    """The seconds of one step kind, from a suite's settings."""

    def __init__(self, suite: Suite, shape: DatasetShape, assume: Assumptions):
        self.suite, self.data, self.assume = suite, shape, assume
        self.model: BackboneShape = model_shape(suite.model)
        self.batch = int(suite.setting("eval.batch_size", EvalConfig().batch_size))
        self.beams = int(suite.setting("eval.num_beams", EvalConfig().num_beams))
        self.max_new = int(suite.setting("eval.max_new_tokens", EvalConfig().max_new_tokens))
        self.probe = int(suite.setting("soft.probe_size", SoftConfig().probe_size))

    def generate(self, n: int, *, trained: bool = True, prompt_factor: int = 1) -> float:
        new = min(self.max_new, TYPICAL_NEW_TOKENS) if trained else self.max_new
        flops = generation_flops(self.model, n, prompt_tokens=self.data.prompt_tokens * prompt_factor,
                                 num_beams=self.beams, new_tokens=new)
        flops += catalogue_flops(self.model, self.data.titles, TITLE_TOKENS)
        dispatch = math.ceil(n / self.batch) * new * self.assume.decode_step_s
        return max(flops / self.assume.generate_flops, dispatch)

    def train_epoch(self, soft: bool) -> float:
        n = min(self.data.train, self.suite.train_size or self.data.train)
        per_token = train_flops_per_token(self.model, lora=True, soft=soft, response_tokens=TYPICAL_RESPONSE_TOKENS,
                                          mean_tokens=self.data.prompt_tokens)
        flops = n * self.data.prompt_tokens * per_token
        return max(flops / self.assume.train_flops, math.ceil(n / self.suite.micro_batch) * self.assume.train_step_s)

    def train(self, soft: bool) -> float:
        epochs = (self.suite.soft_epochs or self.suite.epochs) if soft else self.suite.epochs
        valid = self.generate(min(self.data.valid, self.suite.valid_size or self.data.valid))
        seconds = epochs * (self.train_epoch(soft) + valid)
        if soft:  # the probe: d_0 with the untuned base, then after every epoch
            seconds += self.generate(self.probe, trained=False) + epochs * self.generate(self.probe)
        return seconds

    def test(self) -> int:
        return min(self.data.test, self.suite.test_limit or self.data.test)

    def seconds(self, step: PlannedStep) -> float:
        if step.kind == "prepare":
            return self.assume.prepare_s
        if step.kind == "train-classic":
            epochs = int(self.suite.setting("classic.epochs", ClassicConfig().epochs))
            batches = math.ceil(self.data.pool / ClassicConfig().batch_size)
            return self.assume.process_s + epochs * batches * self.assume.classic_step_s
        if step.kind == "evaluate-classic":
            return self.assume.process_s
        if step.kind == "distill":
            return self.assume.process_s + self.generate(self.data.train)
        if step.kind == "train-llm":
            return self.assume.process_s + self.train(soft=step.owner.startswith(("soft", "llara-soft")))
        if step.owner.startswith("icl"):
            shots = 0 if step.owner == "icl-0" else self.suite.shots
            return self.assume.process_s + self.generate(self.test(), trained=False, prompt_factor=1 + shots)
        return self.assume.process_s + self.generate(self.test())


def estimate(steps: list[PlannedStep], suite: Suite, shape: DatasetShape,
             assume: Assumptions | None = None) -> list[tuple[PlannedStep, float]]:
    """Each step with its estimated seconds on one GPU (upper bounds under `assume`)."""
    costs = _Costs(suite, shape, assume or Assumptions())
    return [(step, costs.seconds(step)) for step in steps]


def render(rows: list[tuple[PlannedStep, float]], assume: Assumptions | None = None) -> str:
    """The plan as text: one line per step (seconds, kind, row), the total, and the assumptions."""
    assume = assume or Assumptions()
    lines = [f"time plan on one {assume.gpu} (UNMEASURED: assumed rates, softrec.bench.quality.timeplan): "
             f"a softrec process {assume.process_s:g} s, a training micro-step >= {assume.train_step_s:g} s, "
             f"a decoding step >= {assume.decode_step_s:g} s, {assume.train_flops / 1e12:g} TFLOP/s training, "
             f"{assume.generate_flops / 1e12:g} TFLOP/s generation; every run to its epoch cap"]
    lines += [f"{seconds:7.0f} s  {step.kind:<16} {step.owner}" for step, seconds in rows]
    total = sum(seconds for _, seconds in rows)
    lines.append(f"{total:7.0f} s  total ({total / 60:.1f} min)")
    return "\n".join(lines)


def describe(steps: list[PlannedStep], suite: Suite, out: Path, datasets: list[str], gpu: str) -> str:
    """The time plan of every dataset: its shape read from OUT/data/NAME once prepared, else amazon-books'."""
    assume, parts = Assumptions(gpu=gpu), []
    for name in datasets:
        prepared = out / "data" / name
        known = (prepared / "dataset.json").exists()
        shape = DatasetShape.of(prepared) if known else AMAZON_BOOKS
        rows = estimate([s for s in steps if s.dataset == name], suite, shape, assume)
        source = f"read from {prepared}" if known else "amazon-books' shape (not prepared yet)"
        parts.append(f"{name} ({source}):\n{render(rows, assume)}")
    return "\n\n".join(parts)
