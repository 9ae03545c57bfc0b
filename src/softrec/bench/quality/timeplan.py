"""A time plan for a suite: every step of a dataset's plan with its estimated seconds, on one GPU
(`--time-plan H200`) or on this CPU (`--time-plan cpu`, and `bench quality`'s ETA for kinds of step
it has not timed yet).

On this CPU the rates are the preflight's: a short timed fp32 matmul times the factors fitted on
measured runs (`preflight.CPU_TRAIN_EFFICIENCY`, `CPU_GENERATE_EFFICIENCY`, `CPU_CATALOGUE_EFFICIENCY`); training is priced on
the tokens a random micro-batch pads to, the catalogue embedding for grounding once per dataset (it
is cached on disk after).

On a GPU it is UNMEASURED: no step of softrec has run on a GPU yet; these are assumptions, to size a
plan before a machine is lent (docs/scaling.md, "Quality on a lent GPU"). Each step takes the larger
of two bounds, plus the start of its `softrec` process:

- compute: the preflight FLOP model (`preflight.train_flops_per_token`, `generation_flops`) over the
  preflight GPU table's realistic bf16 rate (250 TFLOP/s on an H100/H200, 10% of it for generation);
- dispatch: eager PyTorch through transformers' modules launches every small kernel from Python, so a
  270M model cannot keep a GPU busy; a micro-batch's forward + backward and one decoding step of a
  batch take at least `Assumptions.train_step_s` / `decode_step_s`, whatever the batch.

For Gemma 3 270M the dispatch bound wins for training and small decoding batches, the FLOP bound for
decoding batches of 512 prompts (at the table's 10% generation efficiency); the rates are guesses
from typical eager step times of small models on H100-class GPUs, not readings. Upper bounds: every run goes to its epoch
cap (early stopping only shortens), untuned models decode `max_new_tokens` (64) steps a prompt, trained
ones the preflight's `typical_new_tokens` (~1.4 per title token: 19.3 on amazon-books; a weak
teacher's run-ons decode more: 44-53 steps measured on amazon-books at validity 0.1). A forked row's
evaluation is priced as a copy once its training finished keeping the shared epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from softrec.bench.quality.planning import PlannedStep, data_folder
from softrec.bench.quality.suites import Suite
from softrec.config import ClassicConfig, EvalConfig, SoftConfig
from softrec.preflight import (
    GPU_FLOPS,
    GPU_GENERATE_EFFICIENCY,
    TYPICAL_RESPONSE_TOKENS,
    BackboneShape,
    catalogue_flops,
    cpu_busy_note,
    generation_flops,
    model_shape,
    train_flops_per_token,
    typical_new_tokens,
)

CPU = "cpu"  # `--time-plan cpu`: this machine's CPU


@dataclass(frozen=True)
class Assumptions:
    """Per-step costs on one GPU, none of them measured (see the module docstring), or on this CPU
    (`this_cpu`: rates from a timed matmul, no dispatch bound)."""

    gpu: str = "H200"  # a GPU_FLOPS name, or CPU
    process_s: float = 20.0  # imports, CUDA context, the 1 GB fp32 checkpoint to the GPU, the tokenizer
    prepare_s: float = 8.0  # `softrec data prepare` of amazon-books: 7.6 s measured on a 2-core AMD EPYC
    train_step_s: float = 0.08  # a micro-batch's forward + backward + LoRA, eager, dispatch-bound
    decode_step_s: float = 0.025  # one beam step of a batch: 18 eager layers, the chunked LM head, beams
    classic_step_s: float = 0.01  # a SASRec/GRU4Rec batch of 256 windows
    rates: tuple[float, float, float] | None = None  # FLOP/s of training, generation, catalogue; None: GPU table

    @classmethod
    def this_cpu(cls, suite: Suite, fp32: float | None = None) -> Assumptions:
        """This CPU's rates for the suite's dtypes (`fp32`: its matmul rate timed earlier, else timed
        now); a process start of ~15 s (imports, the cached converted checkpoint, the tokenizer) and
        SASRec/GRU4Rec batches of ~0.06 s, validation included (measured alone on a 2-core Intel Xeon with
        AMX: 0.04 s on amazon-industrial, 0.058 s on ml-100k's longer histories; 0.64 s while an LLM
        training shared the cores). A classic row is priced at its epoch cap, an upper bound: early
        stopping ended those runs after 15-79 of 100 epochs."""
        from softrec.hardware import use_bf16
        from softrec.preflight import device_flops

        train_bf16 = use_bf16(str(suite.setting("train.bf16", "auto")), "cpu")
        dtype = str(suite.setting("eval.dtype", EvalConfig().dtype))
        eval_bf16 = dtype == "bfloat16" or (dtype == "auto" and use_bf16("auto", "cpu"))
        rates = (device_flops(CPU, bf16=train_bf16, fp32=fp32), device_flops(CPU, generate=True, bf16=eval_bf16, fp32=fp32),
                 device_flops(CPU, catalogue=True, fp32=fp32))  # the catalogue is embedded by the fp32 base model
        return cls(gpu=CPU, process_s=15.0, train_step_s=0.0, decode_step_s=0.0, classic_step_s=0.06, rates=rates)

    @property
    def train_flops(self) -> float:
        return self.rates[0] if self.rates else GPU_FLOPS[self.gpu]

    @property
    def generate_flops(self) -> float:
        return self.rates[1] if self.rates else GPU_FLOPS[self.gpu] * GPU_GENERATE_EFFICIENCY

    @property
    def catalogue_flops(self) -> float:
        return self.rates[2] if self.rates else self.generate_flops


@dataclass(frozen=True)
class DatasetShape:
    """What the time depends on: split sizes, the classic models' pool, catalogue, prompt tokens."""

    train: int
    valid: int
    test: int
    pool: int  # train_full windows (classic models)
    titles: int
    prompt_tokens: int  # the mean (prefill): tokenizer counts (characters / 3.5 without one), token_counts.sample_lengths
    train_tokens: int  # what a random micro-batch of the suite's size pads a sample to (token_counts.expected_longest)
    title_tokens: float = 16.0

    @classmethod
    def of(cls, prepared: Path, suite: Suite) -> DatasetShape:
        from softrec.config import load_config
        from softrec.data.dataset import PreparedDataset
        from softrec.models.token_counts import (
            TIME_PROBE,
            expected_longest,
            sample_lengths,
            title_tokens,
        )

        data = PreparedDataset.load(prepared)
        config = load_config(overrides=[f"model.name={suite.model}"])
        sizes = [len(data.split(s)) for s in ("train", "valid", "test", "train_full")]
        lengths = sample_lengths(data, config, TIME_PROBE)
        return cls(*sizes, titles=len(data.titles), prompt_tokens=int(sum(lengths) / len(lengths)) + 1,
                   train_tokens=round(expected_longest(lengths, suite.micro_batch)),
                   title_tokens=title_tokens(data, config))


# amazon-books as `softrec data prepare` makes it (reference sizes; read from the prepared folder);
# Gemma 3 tokens, padded at micro-batches of 8, measured on the prepared data
AMAZON_BOOKS = DatasetShape(train=4096, valid=512, test=1000, pool=31163, titles=6343, prompt_tokens=188,
                            train_tokens=238, title_tokens=10.9)


class _Costs:
    """The seconds of one step kind, from a suite's settings."""

    def __init__(self, suite: Suite, shape: DatasetShape, assume: Assumptions):
        self.suite, self.data, self.assume = suite, shape, assume
        self.model: BackboneShape = model_shape(suite.model)
        self.batch = int(suite.setting("eval.batch_size", EvalConfig().batch_size))
        self.beams = int(suite.setting("eval.num_beams", EvalConfig().num_beams))
        self.max_new = int(suite.setting("eval.max_new_tokens", EvalConfig().max_new_tokens))
        self.probe = int(suite.setting("soft.probe_size", SoftConfig().probe_size))
        self.catalogue_left = True  # embedded by the first step that grounds; read from the disk cache after

    def generate(self, n: int, *, trained: bool = True, prompt_factor: int = 1, grounds: bool = True) -> float:
        new = typical_new_tokens(self.data.title_tokens, self.max_new) if trained else self.max_new
        flops = generation_flops(self.model, n, prompt_tokens=self.data.prompt_tokens * prompt_factor,
                                 num_beams=self.beams, new_tokens=new)
        dispatch = math.ceil(n / self.batch) * math.ceil(new) * self.assume.decode_step_s
        return max(flops / self.assume.generate_flops, dispatch) + (self.catalogue() if grounds else 0.0)

    def catalogue(self) -> float:
        """The catalogue's embedding for grounding, at the first step that grounds; 0 after."""
        if not self.catalogue_left:
            return 0.0
        self.catalogue_left = False
        return catalogue_flops(self.model, self.data.titles, self.data.title_tokens) / self.assume.catalogue_flops

    def train_samples(self) -> int:
        return min(self.data.train, self.suite.train_size or self.data.train)

    def train_epoch(self, soft: bool) -> float:
        n = self.train_samples()
        tokens = self.data.train_tokens
        per_token = train_flops_per_token(self.model, lora=True, soft=soft, response_tokens=TYPICAL_RESPONSE_TOKENS,
                                          mean_tokens=tokens)
        flops = n * tokens * per_token
        return max(flops / self.assume.train_flops, math.ceil(n / self.suite.micro_batch) * self.assume.train_step_s)

    def train(self, soft: bool, forked: bool = False) -> float:
        """Every epoch to the cap; `forked`: epoch 1 is a sibling's (`--fork-from`), not trained here."""
        epochs = ((self.suite.soft_epochs or self.suite.epochs) if soft else self.suite.epochs) - int(forked)
        valid = self.generate(min(self.data.valid, self.suite.valid_size or self.data.valid), grounds=False)
        seconds = epochs * (self.train_epoch(soft) + valid) + self.catalogue()
        if soft:  # the probe: d_0 with the untuned base, then after every epoch; it grounds nothing
            seconds += self.generate(self.probe, trained=False, grounds=False)
            seconds += epochs * self.generate(self.probe, grounds=False)
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
            return self.assume.process_s + self.generate(self.train_samples(), grounds=False)  # the teacher's samples, raw text
        if step.kind == "train-llm":
            return self.assume.process_s + self.train(soft=step.owner.startswith(("soft", "llara-soft")),
                                                      forked="--fork-from" in step.argv)
        if step.owner.startswith("icl"):
            shots = 0 if step.owner == "icl-0" else self.suite.shots
            return self.assume.process_s + self.generate(self.test(), trained=False, prompt_factor=1 + shots)
        if _copies_its_sibling(step):
            return self.assume.process_s
        return self.assume.process_s + self.generate(self.test())


def _copies_its_sibling(step: PlannedStep) -> bool:
    """A forked row's evaluation (`--reuse-from`) once its training finished keeping the epoch it
    was forked at: the sibling's tensors, so its evaluation is copied in seconds. Until then it is
    priced in full (a later epoch may still win)."""
    from softrec.errors import UserError
    from softrec.runs import RunDir

    if "--reuse-from" not in step.argv or "--run-dir" not in step.argv:
        return False
    try:  # a damaged run.json prices the evaluation in full; it must not blank the whole ETA
        info = RunDir(step.argv[step.argv.index("--run-dir") + 1]).info()
    except UserError:
        return False
    return (info.get("status") == "finished" and info.get("best_epoch") is not None
            and info.get("best_epoch") == info.get("forked_at_epoch"))


def estimate(steps: list[PlannedStep], suite: Suite, shape: DatasetShape,
             assume: Assumptions | None = None) -> list[tuple[PlannedStep, float]]:
    """Each step of one dataset, in plan order, with its estimated seconds (upper bounds under `assume`)."""
    costs = _Costs(suite, shape, assume or Assumptions())
    return [(step, costs.seconds(step)) for step in steps]


def render(rows: list[tuple[PlannedStep, float]], assume: Assumptions | None = None) -> str:
    """The plan as text: one line per step (seconds, kind, row), the total, and the assumptions."""
    assume = assume or Assumptions()
    if assume.gpu == CPU:
        lines = [f"time plan on this CPU (its fp32 matmul rate, as the suite recorded it or timed now, x the preflight's fitted factors): "
                 f"a softrec process {assume.process_s:g} s, {assume.train_flops / 1e12:.2g} TFLOP/s training, "
                 f"{assume.generate_flops / 1e12:.2g} TFLOP/s generation; every run to its epoch cap"]
    else:
        lines = [f"time plan on one {assume.gpu} (UNMEASURED: assumed rates, softrec.bench.quality.timeplan): "
                 f"a softrec process {assume.process_s:g} s, a training micro-step >= {assume.train_step_s:g} s, "
                 f"a decoding step >= {assume.decode_step_s:g} s, {assume.train_flops / 1e12:g} TFLOP/s training, "
                 f"{assume.generate_flops / 1e12:g} TFLOP/s generation; every run to its epoch cap"]
    lines += [f"{seconds:7.0f} s  {step.kind:<16} {step.owner}" for step, seconds in rows]
    total = sum(seconds for _, seconds in rows)
    lines.append(f"{total:7.0f} s  total ({total / 60:.1f} min)")
    return "\n".join(lines)


def shape_of(out: Path, name: str, suite: Suite) -> DatasetShape | None:
    """The dataset's shape read from OUT/data/NAME, or None while it is not prepared."""
    prepared = data_folder(out, name)
    return DatasetShape.of(prepared, suite) if (prepared / "dataset.json").exists() else None


def describe(steps: list[PlannedStep], suite: Suite, out: Path, datasets: list[str], device: str) -> str:
    """The time plan of every dataset: its shape read from OUT/data/NAME once prepared, else amazon-books'.
    On this CPU: the rate the suite's run recorded in OUT (timed between its steps), else timed now,
    with `cpu_busy_note` when other work holds the CPU (beside a running suite a 2-core Xeon timed 5x low)."""
    parts = []
    if device == CPU:
        saved = saved_cpu_rate(out)
        assume = Assumptions.this_cpu(suite, saved)
        if saved is None and (busy := cpu_busy_note()):
            parts.append(f"{busy}; a suite's run records its rate between steps (OUT/{CPU_RATE}), reused here")
    else:
        assume = Assumptions(gpu=device)
    for name in datasets:
        shape = shape_of(out, name, suite)
        rows = estimate([s for s in steps if s.dataset == name], suite, shape or AMAZON_BOOKS, assume)
        source = f"read from {data_folder(out, name)}" if shape else "amazon-books' shape (not prepared yet)"
        parts.append(f"{name} ({source}):\n{render(rows, assume)}")
    return "\n\n".join(parts)


CPU_RATE = "cpu_rate.json"  # in the suite's folder: this machine's fp32 matmul rate, as the run timed it


def suite_cpu_rate(out: Path, *, record: bool) -> float:
    """This CPU's fp32 matmul rate for the suite in OUT: the one its run timed (between steps, with
    none of its work running) when OUT/cpu_rate.json names this machine, else timed now and, when
    `record` (the run, which owns the folder), saved there. `--status` reads it: timed beside the
    running suite, its ETA swung 8.2-10.3 h from one call to the next."""
    from softrec.preflight import cpu_matmul_flops
    from softrec.runs import atomic_write_json

    if (saved := saved_cpu_rate(out)) is not None:
        return saved
    rate = cpu_matmul_flops()
    if record and out.is_dir():
        atomic_write_json(out / CPU_RATE, {"machine": _this_machine(), "fp32_flops": rate})
    return rate


def _this_machine() -> str:
    import os

    import torch

    from softrec.bench import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"


def saved_cpu_rate(out: Path) -> float | None:
    """The fp32 rate a suite's run recorded in OUT/cpu_rate.json, when it names this machine."""
    import json

    try:
        saved = json.loads((out / CPU_RATE).read_text(encoding="utf-8"))
        return float(saved["fp32_flops"]) if saved.get("machine") == _this_machine() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class RunPlan:
    """Every step's planned seconds on the machine that runs the suite, by command (`bench quality`'s
    ETA): this CPU's rates (`suite_cpu_rate`; `record`: the run saves the rate it timed), or the GPU
    table's row for the first GPU (the H100's when not in the table); a dataset's shape read once it
    is prepared, amazon-books' until then. An estimate that fails (a backbone without a readable
    shape) leaves the ETA unknown, never the run stopped."""

    def __init__(self, steps: list[PlannedStep], suite: Suite, out: Path, *, record: bool = False):
        self.steps, self.suite, self.out, self.record = steps, suite, out, record
        self.datasets = list(dict.fromkeys(step.dataset for step in steps))
        self.shapes: dict[str, DatasetShape] = {}
        self.assume: Assumptions | None = None

    def __call__(self) -> dict[str, float]:
        from softrec.preflight import device_name

        try:
            if self.assume is None:
                device = device_name()
                gpu = next((name for name in GPU_FLOPS if name in device), "H100")
                self.assume = (Assumptions.this_cpu(self.suite, suite_cpu_rate(self.out, record=self.record))
                               if device == CPU else Assumptions(gpu=gpu))
            seconds = {}
            for name in self.datasets:
                if name not in self.shapes and (shape := shape_of(self.out, name, self.suite)):
                    self.shapes[name] = shape
                rows = estimate([s for s in self.steps if s.dataset == name], self.suite,
                                self.shapes.get(name, AMAZON_BOOKS), self.assume)
                seconds.update((step.command, s) for step, s in rows)
            return seconds
        except Exception:  # noqa: BLE001 -- a tokenizer or shape that fails to load must not stop the suite
            return {}
