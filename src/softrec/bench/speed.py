"""`softrec bench speed --out DIR`: softrec's speed next to the obvious baseline, measured in one run.

    softrec bench speed --out DIR [--model gemma-3-270m] [--data PREPARED_DIR] [--quick]

Sections (each: raw repeats, their median, and a ratio):
  train       training tokens/s per optimizer step: softrec's SoftTrainer (built by `build_trainer`,
              what `softrec train` runs) vs a plain `transformers.Trainer` (model loss over the full
              vocabulary, fp32, DataCollatorForSeq2Seq), same samples and LoRA; the setups alternate
              step by step, so load from other processes hits both alike. Also a SOFT step
              (lambda 0.5: both targets in one packed forward) vs the SFT step, in seconds.
  soft_epoch  epoch time of SOFT (adaptive curriculum, including its per-epoch probe distance) vs SFT,
              both through `train_llm` on the same N samples; SOFT trains on targets that
              `softrec.inference.distill` generates from the SFT run (timed too). Validation is off
              for both (it costs both the same).
  decoding    catalogue-constrained beam search prompts/s: softrec (prompt-shared KV cache,
              catalogue-token vocabulary) vs `generate(prefix_allowed_tokens_fn=...)` over a dict
              trie, batch by batch in turns; whether every prompt's ranked items are identical.
  evaluation  prompts/s of the full `evaluate_model` path (decode + grounding + metrics) on K test
              prompts with the SFT run's model, next to the time spent in decoding alone.
  mfu         model FLOP utilisation of the training steps above: model FLOPs (formula in
              `ModelShape.step_flops`) per second over this machine's measured matmul peak (bf16
              when the step runs under bf16 autocast, fp32 otherwise; both peaks are reported).

Writes DIR/results.json and DIR/results.md (rewritten after every section, atomically). The
data default is amazon-books from the shared data folder when present, else the built-in demo.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from softrec.config import add_config_options, config_from_args
from softrec.errors import UserError

Log = Callable[[str], None]
REFERENCE_TRAIN, REFERENCE_PROBE = 4096, 256  # SOFT.md: training samples and probe-set size

# Sizes: the default run (minutes on a 2-core CPU with Gemma 3 270M) and --quick (a smoke run).
# Unconstrained beam search (distillation, the probe, evaluation) is the slow part on a CPU: about
# 10-20 s a prompt for Gemma 3 270M when it runs to 64 new tokens.
DEFAULTS = {"train_samples": 32, "epoch_samples": 16, "micro_batch": 8, "warmup": 1, "epochs": 2,
            "prompts": 8, "batch_size": 2, "repeats": 3, "matmul_size": 2048}
QUICK = {"train_samples": 4, "epoch_samples": 2, "micro_batch": 2, "warmup": 1, "epochs": 1,
         "prompts": 2, "batch_size": 1, "repeats": 2, "matmul_size": 512}


# ---------------------------------------------------------------- small helpers
def sync() -> None:
    """Wait for queued GPU work, so a wall-clock interval covers what it claims to."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then t[0] is the block's seconds (GPU work included)."""
    out: list[float] = []
    sync()
    start = time.perf_counter()
    yield out
    sync()
    out.append(time.perf_counter() - start)


def series(values: Sequence[float]) -> dict[str, Any]:
    """Raw repeats and their median (what results.json stores for every measurement)."""
    values = [float(v) for v in values]
    return {"repeats": values, "median": statistics.median(values) if values else None}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def machine() -> dict[str, Any]:
    """`softrec.bench.machine()` (CPU, cores, threads, RAM, GPUs, versions, commit), plus the date,
    the device the measurements ran on and whether the CPU computes bf16 natively."""
    from softrec.bench import machine as describe_machine
    from softrec.hardware import cpu_has_bf16
    from softrec.models.registry import default_device

    return {**describe_machine(), "device": str(default_device()), "cpu_native_bf16": cpu_has_bf16(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- matmul peak and FLOP formula
def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 3, min_seconds: float = 0.3,
                device: torch.device | None = None) -> dict[str, Any]:
    """GFLOP/s of `size`^2 square matmuls in `dtype` on `device` (default: default_device()), one
    value per repeat; each repeat runs enough matmuls to last about `min_seconds`."""
    from softrec.models.registry import default_device

    device = device or default_device()
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    with stopwatch() as one:
        a @ b  # warm-up, and a first guess of one matmul's time
    count = max(1, math.ceil(min_seconds / max(one[0], 1e-6)))
    rates = []
    for _ in range(repeats):
        with stopwatch() as t:
            for _ in range(count):
                a @ b
        rates.append(2 * size**3 * count / t[0] / 1e9)
    return {**series(rates), "size": size, "matmuls_per_repeat": count, "dtype": str(dtype).removeprefix("torch.")}


FLOP_FORMULA = (
    "model FLOPs per step = (4+2f)*N*T + 6*N_lora*T + (4+2f)*V*d*T_lab + 6*L*d_attn*sum(len^2); "
    "f = 0 with LoRA (frozen weights get activation gradients only), 1 for full fine-tuning; "
    "N = weights of the decoder layers' linear maps (attention q/k/v/o and MLP; no embeddings, "
    "norms or LM head); N_lora = LoRA adapter weights; V*d = LM head weights; T = non-padding tokens; "
    "T_lab = labelled positions (the head is counted only there: the useful work, whatever a setup "
    "executes); L*d_attn = layers x heads x head_dim; len = each row's non-padding length (causal "
    "attention, QK^T and AV, forward 2*L*d_attn*len^2, backward twice that)"
)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formula needs from a (LoRA-wrapped) causal LM; see FLOP_FORMULA."""

    body: int
    lora: int
    head: int
    attention: int  # layers x heads x head_dim
    full_finetune: bool

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        from softrec.models.wrappers import causal_lm_of

        lm = causal_lm_of(model)
        head = lm.get_output_embeddings()
        body = lora = 0
        for name, module in lm.named_modules():
            if not isinstance(module, torch.nn.Linear) or module is head:
                continue
            if "lora_" in name:
                lora += module.weight.numel()
            else:
                body += module.weight.numel()
        config = lm.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(body, lora, head.weight.numel(), config.num_hidden_layers * heads * head_dim, lora == 0)

    def step_flops(self, tokens: int, labelled: int, squares: int) -> float:
        f = 1 if self.full_finetune else 0
        return ((4 + 2 * f) * self.body * tokens + 6 * self.lora * tokens
                + (4 + 2 * f) * self.head * labelled + 6 * self.attention * squares)


# ---------------------------------------------------------------- training steps
@dataclass
class Step:
    """One optimizer step: its time and the batch's shape (rows x padded width)."""

    seconds: float
    tokens: int  # non-padding tokens the forward reads
    labelled: int  # positions with a target (the head's useful work)
    squares: int  # sum over rows of (non-padding length)^2: the attention term
    rows: int
    width: int


def batch_step(batch: dict[str, Any], seconds: float = 0.0) -> Step:
    """Token counts of a collated batch (before the Trainer consumes it): a 2D attention mask gives
    each row's length; SOFT's packed rows (4D mask) count their `n_tokens`, attention unknown."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        lengths = mask.sum(dim=1)
        tokens, squares = int(lengths.sum()), int((lengths**2).sum())
    else:
        tokens, squares = int(batch.get("n_tokens") or ids.numel()), 0
    labelled = sum(int((batch[k] != -100).sum()) for k in ("labels", "targets", "targets_distilled")
                   if isinstance(batch.get(k), torch.Tensor))
    return Step(seconds, tokens, labelled, squares, rows, width)


def run_steps(trainer: Any, count: int) -> Iterator[Step]:
    """Each optimizer step as `Trainer.train` runs one (training_step, gradient clipping, optimizer
    and scheduler step), one micro-batch per step, so that setups can alternate step by step."""
    trainer.create_optimizer_and_scheduler(num_training_steps=count)
    trainer.current_gradient_accumulation_steps = 1
    batches = iter(trainer.get_train_dataloader())
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for _ in range(count):
        batch = next(batches)
        step = batch_step(batch)
        with stopwatch() as t:
            trainer.training_step(trainer.model, batch)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.model.zero_grad()
        step.seconds = t[0]
        yield step


def plain_trainer(config: Any, samples: Sequence[Any], dataset: Any, work: Path) -> Any:
    """The obvious setup: HF Trainer + the model's own loss (full logits), Seq2Seq collator, random
    batches; same backbone, LoRA, learning rate, micro-batch and dtype as softrec's (bf16 autocast
    where softrec uses it, so the ratio measures the method, not the hardware's bf16)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from softrec.hardware import use_bf16
    from softrec.models.registry import load_backbone
    from softrec.training.batches import encode_samples
    from softrec.training.trainer import prepare_model

    model, tokenizer = load_backbone(config.model.name)
    tokenizer.padding_side = "right"
    encoded = encode_samples(samples, dataset, tokenizer, template=config.model.template,
                             max_length=config.model.max_length)
    torch.manual_seed(config.train.seed)
    model = prepare_model(model, config)  # the same LoRA softrec trains
    rows = [
        {"input_ids": e.prompt_ids + e.real_ids, "attention_mask": [1] * (len(e.prompt_ids) + len(e.real_ids)),
         "labels": [-100] * len(e.prompt_ids) + e.real_ids}
        for e in encoded
    ]
    return Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "plain"), per_device_train_batch_size=config.train.micro_batch,
            learning_rate=config.train.learning_rate, lr_scheduler_type="constant", save_strategy="no",
            report_to="none", seed=config.train.seed, disable_tqdm=True, dataloader_pin_memory=False,
            use_cpu=not torch.cuda.is_available(), bf16=use_bf16(config.train.bf16, model.device.type),
        ),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )


def softrec_trainer(config: Any, dataset: Any, work: Path, distilled: dict[str, str] | None = None) -> Any:
    """What `softrec train` runs: `build_trainer` is the constructor `train_llm` uses."""
    from softrec.training.trainer import build_trainer

    out = Path(tempfile.mkdtemp(prefix="softrec-run-", dir=work))
    trainer, _ = build_trainer(config, dataset, out, distilled=distilled, progress=False)
    return trainer


def step_config(config: Any, samples: int, *, soft: bool = False) -> Any:
    """One optimizer step per micro-batch over `samples` training samples; `soft`: lambda 0.5."""
    train = {"effective_batch": config.train.micro_batch, "epochs": 1, "train_samples": samples,
             "validate_every_epoch": False, "checkpoint_every": 0}
    if soft:
        return config.with_(train={**train, "method": "soft-fixed"}, soft={"fixed_lambda": 0.5})
    return config.with_(train=train)


def stand_in_distilled(samples: Sequence[Any], dataset: Any) -> dict[str, str]:
    """SOFT needs self-distilled targets: another sample's real title stands in (a generation is a
    title-like text of similar length)."""
    from softrec.data.prompts import response_text

    return {s.sample_id: response_text(dataset.titles[samples[i - 1].target]) for i, s in enumerate(samples)}


@dataclass
class TrainingComparison:
    steps: dict[str, list[Step]]  # setup -> every step, warm-up included
    warmup: int
    shapes: dict[str, ModelShape]
    bf16: dict[str, bool]  # setup -> ran under bf16 autocast
    samples: int
    mean_tokens: float = 0.0

    def timed(self, name: str) -> list[Step]:
        return self.steps[name][self.warmup :]


def compare_training(config: Any, dataset: Any, work: Path, *, samples: int, warmup: int,
                     soft: bool = False, log: Log = print) -> TrainingComparison:
    """plain vs softrec (and, with `soft`, a lambda-0.5 SOFT step) on the same first-`samples`
    training samples, one pass, the setups alternating step by step."""
    from softrec.data.subsets import subset

    sft = step_config(config, samples)
    chosen = subset(dataset.split("train"), samples, config.data.seed)  # what build_trainer trains on
    setups = {"plain": plain_trainer(sft, chosen, dataset, work), "softrec": softrec_trainer(sft, dataset, work)}
    if soft:
        setups["soft"] = softrec_trainer(step_config(config, samples, soft=True), dataset, work,
                                         stand_in_distilled(chosen, dataset))
    count = len(chosen) // sft.train.micro_batch  # whole micro-batches only
    if count <= warmup:
        raise UserError(f"{len(chosen)} training samples in micro-batches of {sft.train.micro_batch} give "
                        f"{count} steps: need more than the {warmup} warm-up steps")
    runners = {name: run_steps(trainer, count) for name, trainer in setups.items()}
    result = TrainingComparison(
        {name: [] for name in setups}, warmup,
        {name: ModelShape.of(t.model) for name, t in setups.items()},
        {name: bool(getattr(t, "bf16_autocast", False) or t.args.bf16) for name, t in setups.items()}, len(chosen),
    )
    for number in range(count):  # alternate the setups: they share any CPU contention
        for name, runner in runners.items():
            result.steps[name].append(next(runner))
        log(f"  step {number + 1}/{count}: " + ", ".join(
            f"{name} {result.steps[name][-1].seconds:.1f} s" for name in setups))
    result.mean_tokens = sum(s.tokens for s in result.steps["softrec"]) / len(chosen)
    return result


def step_summary(steps: Sequence[Step]) -> dict[str, Any]:
    """tokens/s per step (median) and over all steps (aggregate)."""
    tokens, seconds = sum(s.tokens for s in steps), sum(s.seconds for s in steps)
    return {
        "tokens_per_s": series([s.tokens / s.seconds for s in steps]),
        "step_seconds": series([s.seconds for s in steps]),
        "aggregate_tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        "steps": len(steps),
    }


# ---------------------------------------------------------------- constrained decoding
def ranked_items(trie: Any, beams: Sequence[Any]) -> list[list[int]]:
    """Per prompt, the items of its complete beams in beam order (what trie grounding ranks)."""
    out = []
    for b in beams:
        seen: list[int] = []
        for ids in b.token_ids:
            seen += [i for i in trie.items_for(ids) if i not in seen]
        out.append(seen)
    return out


@dataclass
class DecodingComparison:
    seconds: dict[str, list[float]]  # decoder -> seconds per batch
    sizes: list[int]  # prompts per batch
    beams: dict[str, list[Any]]  # decoder -> Beams per prompt, input order
    identical: int  # prompts whose ranked items agree
    identical_tokens: int  # prompts whose beams' tokens agree
    valid: int  # softrec beams that are complete catalogue titles
    total: int

    def rates(self, name: str) -> list[float]:
        return [n / s for n, s in zip(self.sizes, self.seconds[name], strict=True)]

    def rate(self, name: str) -> float:
        return sum(self.sizes) / sum(self.seconds[name])


def compare_decoding(model: Any, tokenizer: Any, prompts: Sequence[str], trie: Any, dict_trie: Any, *,
                     num_beams: int, max_new_tokens: int, batch_size: int, log: Log = print) -> DecodingComparison:
    """softrec's constrained decoder vs `generate(prefix_allowed_tokens_fn)`, taking turns batch by
    batch (alternating which goes first) over the same length-sorted batches."""
    from softrec.inference.generate import generate_baseline, generate_beam_ids

    settings = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size)
    warm = {**settings, "max_new_tokens": 2}  # allocator and kernels, not timed
    generate_beam_ids(model, tokenizer, prompts[:1], **warm, constrain_to=trie)
    generate_baseline(model, tokenizer, prompts[:1], **warm, trie=dict_trie)
    runs = {
        "softrec": lambda batch: generate_beam_ids(model, tokenizer, batch, **settings, constrain_to=trie),
        "baseline": lambda batch: generate_baseline(model, tokenizer, batch, **settings, trie=dict_trie),
    }
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))  # as generate_beam_ids batches
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    beams: dict[str, list[Any]] = {name: [None] * len(prompts) for name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for number, indices in enumerate(batches):
        batch = [prompts[i] for i in indices]
        for name in (("softrec", "baseline") if number % 2 == 0 else ("baseline", "softrec")):
            with stopwatch() as t:
                out = runs[name](batch)
            for index, b in zip(indices, out, strict=True):
                beams[name][index] = b
            seconds[name].append(t[0])
            log(f"  batch {number + 1}/{len(batches)} {name:8s} {t[0]:7.1f}s")
    fast, slow = beams["softrec"], beams["baseline"]
    same = sum(a == b for a, b in zip(ranked_items(trie, fast), ranked_items(trie, slow), strict=True))
    same_tokens = sum(a.token_ids == b.token_ids for a, b in zip(fast, slow, strict=True))
    valid = sum(bool(trie.items_for(ids)) for b in fast for ids in b.token_ids)
    total = sum(len(b.token_ids) for b in fast)
    # seconds per decoder are in batch order whichever went first
    return DecodingComparison(seconds, [len(b) for b in batches], beams, same, same_tokens, valid, total)


# ---------------------------------------------------------------- the sections of `bench speed`
@dataclass
class Bench:
    """State shared by the sections of one `bench speed` run."""

    config: Any
    dataset: Any
    work: Path
    sizes: dict[str, int]
    probe_size: int
    log: Log
    results: dict[str, Any] = field(default_factory=dict)
    train: TrainingComparison | None = None
    sft_run: Path | None = None


def section_train(bench: Bench) -> dict[str, Any]:
    comp = compare_training(bench.config, bench.dataset, bench.work, samples=bench.sizes["train_samples"],
                            warmup=bench.sizes["warmup"], soft=True, log=bench.log)
    bench.train = comp
    out = {name: step_summary(comp.timed(name)) for name in comp.steps}
    soft_s, sft_s = (statistics.median(s.seconds for s in comp.timed(n)) for n in ("soft", "softrec"))
    return {
        "unit": "optimizer step (one micro-batch), after the warm-up steps",
        "samples": comp.samples,
        "micro_batch": bench.config.train.micro_batch,
        "warmup_steps": comp.warmup,
        "mean_tokens_per_sample": round(comp.mean_tokens, 1),
        "bf16_autocast": comp.bf16,
        **out,
        "ratio": ratio(out["softrec"]["tokens_per_s"]["median"], out["plain"]["tokens_per_s"]["median"]),
        "soft_step_ratio": ratio(soft_s, sft_s),
    }


def _epoch_config(config: Any, method: str, epochs: int, samples: int, probe_size: int) -> Any:
    return config.with_(train={"method": method, "epochs": epochs, "train_samples": samples,
                               "validate_every_epoch": False, "checkpoint_every": 0},
                        soft={"probe_size": probe_size})


def section_soft_epoch(bench: Bench) -> dict[str, Any]:
    """SFT run -> distillation -> SOFT run, through the stages' own entry points."""
    from softrec.inference.distill import distill, load_distilled
    from softrec.training.curriculum import curriculum_for
    from softrec.training.trainer import train_llm

    epochs, data = bench.sizes["epochs"], bench.dataset
    sft_dir, soft_dir = bench.work / "sft", bench.work / "soft"
    for path in (sft_dir, soft_dir):
        shutil.rmtree(path, ignore_errors=True)  # a finished run with the same key would be reused
    n = bench.sizes["epoch_samples"]  # train_llm and distill both take this seeded subset
    sft_config = _epoch_config(bench.config, "sft", epochs, n, bench.probe_size)
    with stopwatch() as sft_wall:
        sft = train_llm(sft_config, data, sft_dir, progress=False)
    bench.sft_run = sft_dir
    bench.log(f"  SFT: {epochs} epochs in {sft_wall[0]:.1f} s")
    with stopwatch() as distill_wall:
        distill(sft_dir, data, sft_config, progress=False)
    bench.log(f"  distillation: {n} samples in {distill_wall[0]:.1f} s")
    soft_config = _epoch_config(bench.config, "soft", epochs, n, bench.probe_size)
    curriculum = curriculum_for(soft_config, data, soft_dir)
    probe_seconds: list[float] = []
    measure = curriculum.measure

    def timed_measure(model: Any, tokenizer: Any) -> float:
        with stopwatch() as t:
            value = measure(model, tokenizer)
        probe_seconds.append(t[0])
        return value

    curriculum.measure = timed_measure
    with stopwatch() as soft_wall:
        soft = train_llm(soft_config, data, soft_dir, distilled=load_distilled(sft_dir), curriculum=curriculum,
                         progress=False)
    bench.log(f"  SOFT: {epochs} epochs in {soft_wall[0]:.1f} s (probe distances: "
              + ", ".join(f"{s:.1f} s" for s in probe_seconds) + ")")
    sft_epochs = series([e["train_seconds"] for e in sft.history])
    soft_epochs = series([e["train_seconds"] for e in soft.history])
    return {
        "unit": "training epoch (SOFT's includes its end-of-epoch probe distance)",
        "samples": n,
        "epochs": epochs,
        "probe_size": bench.probe_size,
        "sft": {"epoch_seconds": sft_epochs, "run_seconds": sft_wall[0]},
        "soft": {
            "epoch_seconds": soft_epochs,
            "run_seconds": soft_wall[0],
            "lambdas": [e.get("lambda") for e in soft.history],
            "distances": curriculum.history()["distances"],
            "probe_seconds": probe_seconds,  # d_0 (before training, once per run), then one per epoch
        },
        "distillation": {"seconds": distill_wall[0], "prompts_per_s": n / distill_wall[0],
                         "beams": soft_config.soft.distill_beams,
                         "max_new_tokens": soft_config.soft.distill_max_new_tokens},
        "ratio": ratio(soft_epochs["median"], sft_epochs["median"]),
        "pipeline_ratio": ratio(distill_wall[0] + soft_wall[0], sft_wall[0]),
    }


def _test_prompts(bench: Bench, tokenizer: Any) -> tuple[list[Any], list[str]]:
    from softrec.data.prompts import sample_prompt

    samples = bench.dataset.split("test")[: bench.sizes["prompts"]]
    template = bench.config.model.template
    return samples, [sample_prompt(bench.dataset, s, template, tokenizer) for s in samples]


def section_decoding(bench: Bench) -> dict[str, Any]:
    from softrec.data.prompts import end_token_id
    from softrec.evaluation.evaluate import title_trie
    from softrec.inference.trie import DictTrie
    from softrec.models.registry import load_backbone

    model, tokenizer = load_backbone(bench.config.model.name)
    _, prompts = _test_prompts(bench, tokenizer)
    template, titles = bench.config.model.template, bench.dataset.titles
    with stopwatch() as trie_s:
        trie = title_trie(tokenizer, titles, template)
    with stopwatch() as dict_s:
        dict_trie = DictTrie.from_titles(tokenizer, titles, end_token_id(tokenizer, template))
    ev = bench.config.eval
    comp = compare_decoding(model, tokenizer, prompts, trie, dict_trie, num_beams=ev.num_beams,
                            max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, log=bench.log)
    fast, slow = series(comp.rates("softrec")), series(comp.rates("baseline"))
    return {
        "unit": "batch of prompts (prompts/s per batch)",
        "prompts": len(prompts),
        "batch_size": ev.batch_size,
        "beams": ev.num_beams,
        "max_new_tokens": ev.max_new_tokens,
        "catalogue_titles": len(titles),
        "trie_build_seconds": {"softrec": trie_s[0], "baseline": dict_s[0]},
        "softrec": {"prompts_per_s": fast, "aggregate_prompts_per_s": comp.rate("softrec")},
        "baseline": {"prompts_per_s": slow, "aggregate_prompts_per_s": comp.rate("baseline")},
        "identical_rankings": comp.identical,
        "identical_beam_tokens": comp.identical_tokens,
        "complete_titles": f"{comp.valid}/{comp.total}",
        "ratio": ratio(fast["median"], slow["median"]),
    }


@contextlib.contextmanager
def timing_calls(module: Any, name: str) -> Iterator[list[float]]:
    """Seconds of every call to `module.name` inside the block (the attribute is restored after)."""
    original = getattr(module, name)
    seconds: list[float] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stopwatch() as t:
            result = original(*args, **kwargs)
        seconds.append(t[0])
        return result

    setattr(module, name, wrapper)
    try:
        yield seconds
    finally:
        setattr(module, name, original)


def section_evaluation(bench: Bench) -> dict[str, Any]:
    """`evaluate_model` on chunks of `batch_size` test prompts (each chunk is a whole call: decode,
    ground, metrics), with the SFT run's model as `softrec evaluate --run` loads it."""
    from softrec.evaluation import evaluate as evaluation
    from softrec.inference.grounding import catalogue_embeddings
    from softrec.models.registry import load_backbone, load_run_model

    config = bench.config
    if bench.sft_run is not None:
        model, tokenizer = load_run_model(bench.sft_run)
        which = "the SFT run (base + LoRA adapter)"
    else:
        model, tokenizer = load_backbone(config.model.name)
        which = "the untuned base model"
    samples, _ = _test_prompts(bench, tokenizer)
    with stopwatch() as catalogue_s:  # once per model and catalogue, then from the disk cache
        catalogue_embeddings(model, tokenizer, bench.dataset, cache_key=config.model.name)
    size = config.eval.batch_size
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    total, decoding = [], []
    for number, chunk in enumerate(chunks):
        with timing_calls(evaluation, "generate_beam_ids") as generate_s, stopwatch() as t:
            evaluation.evaluate_model(model, tokenizer, bench.dataset, chunk, config.eval,
                                      template=config.model.template, base_model_name=config.model.name,
                                      progress=False)
        total.append(t[0])
        decoding.append(sum(generate_s))
        bench.log(f"  chunk {number + 1}/{len(chunks)}: {len(chunk)} prompts in {t[0]:.1f} s "
                  f"(decoding {decoding[-1]:.1f} s)")
    sizes = [len(c) for c in chunks]
    full = series([n / s for n, s in zip(sizes, total, strict=True)])
    alone = series([n / s for n, s in zip(sizes, decoding, strict=True)])
    return {
        "unit": "evaluate_model call on one chunk of prompts (prompts/s per chunk)",
        "model": which,
        "prompts": len(samples),
        "grounding": config.eval.grounding,
        "beams": config.eval.num_beams,
        "max_new_tokens": config.eval.max_new_tokens,
        "catalogue_embedding_seconds": catalogue_s[0],
        "softrec": {"prompts_per_s": full, "aggregate_prompts_per_s": sum(sizes) / sum(total)},
        "decoding_only": {"prompts_per_s": alone, "aggregate_prompts_per_s": sum(sizes) / sum(decoding)},
        "ratio": ratio(full["median"], alone["median"]),
    }


def _mfu_of(comp: TrainingComparison, name: str, peaks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shape = comp.shapes[name]
    dtype = "bfloat16" if comp.bf16[name] else "float32"
    peak = peaks[dtype]["median"] * 1e9
    steps = comp.timed(name)
    model = [shape.step_flops(s.tokens, s.labelled, s.squares) for s in steps]
    # what the setup executes: every padded position through the body, the head where the setup runs it
    head_rows = [s.labelled if name != "plain" else s.rows * s.width for s in steps]
    executed = [shape.step_flops(s.rows * s.width, h, s.rows * s.width**2) for s, h in zip(steps, head_rows, strict=True)]
    achieved = [f / s.seconds for f, s in zip(model, steps, strict=True)]
    return {
        "peak_dtype": dtype,
        "mfu": series([a / peak for a in achieved]),
        "achieved_gflops": series([a / 1e9 for a in achieved]),
        "model_gflop_per_step": series([f / 1e9 for f in model]),
        "executed_gflop_per_step": series([f / 1e9 for f in executed]),
        "shape": asdict(shape),
    }


def section_mfu(bench: Bench) -> dict[str, Any]:
    if bench.train is None:
        raise RuntimeError("the mfu section needs the train section's steps")
    size, repeats = bench.sizes["matmul_size"], bench.sizes["repeats"]
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        peak = matmul_peak(dtype, size, repeats)
        peaks[peak["dtype"]] = peak
        bench.log(f"  {peak['dtype']} matmul {size}^2: median {peak['median']:.1f} GFLOP/s over {repeats} repeats")
    out = {name: _mfu_of(bench.train, name, peaks) for name in ("softrec", "plain")}
    return {
        "unit": "training step of the train section (MFU per step)",
        "formula": FLOP_FORMULA,
        "peak_gflops": peaks,
        "threads": torch.get_num_threads(),
        **out,
        "ratio": ratio(out["softrec"]["mfu"]["median"], out["plain"]["mfu"]["median"]),
    }


def section_generation(bench: Bench) -> dict[str, Any]:
    """The engine vs plain `model.generate` (see softrec.bench.generation) on the test prompts
    (evaluation, L2 grounding included) and the train prompts (self-distillation), with the SFT run's
    adapter as `softrec evaluate --run` loads it."""
    from softrec.bench.generation import compare_stage
    from softrec.data.prompts import strip_response
    from softrec.inference import grounding
    from softrec.models.registry import load_backbone, load_run_model

    config = bench.config
    model, tokenizer = load_run_model(bench.sft_run) if bench.sft_run else load_backbone(config.model.name)
    samples, eval_prompts = _test_prompts(bench, tokenizer)
    from softrec.data.prompts import sample_prompt

    train = bench.dataset.split("train")[: len(samples)]
    distill_prompts = [sample_prompt(bench.dataset, s, config.model.template, tokenizer) for s in train]
    adapter_off = model.disable_adapter if hasattr(model, "disable_adapter") else contextlib.nullcontext
    with torch.inference_mode(), adapter_off():
        catalogue = grounding.catalogue_embeddings(model, tokenizer, bench.dataset, cache_key=config.model.name)

    def ground(texts: list[str]) -> None:
        with torch.inference_mode(), adapter_off():
            queries = grounding.embed_texts(model, tokenizer, [strip_response(t) or " " for t in texts])
        grounding.rank_by_distance(queries, catalogue)

    settings = {"num_beams": 4, "max_new_tokens": 64, "dtype": config.eval.dtype,
                "engine_batch": config.eval.batch_size, "log": bench.log}
    evaluation = compare_stage(model, tokenizer, eval_prompts, after=ground, **settings)
    distillation = compare_stage(model, tokenizer, distill_prompts, **settings)
    return {"unit": "whole stage over its prompts (prompts/s)", "evaluation": evaluation,
            "distillation": distillation, "ratio": evaluation["ratio"]}


SECTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "train": section_train,
    "mfu": section_mfu,
    "soft_epoch": section_soft_epoch,
    "decoding": section_decoding,
    "evaluation": section_evaluation,
    "generation": section_generation,
}


# ---------------------------------------------------------------- results.md
def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 0.01 else f"{value:.2g}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measurement, softrec, baseline, ratio, notes) per measured quantity."""
    rows = []
    if t := r.get("train"):
        rows.append((
            "training tokens/s (SFT step)", _num(t["softrec"]["tokens_per_s"]["median"]),
            _num(t["plain"]["tokens_per_s"]["median"]) + " (plain HF Trainer)", _x(t["ratio"]),
            f"median over {t['softrec']['steps']} steps of {t['micro_batch']} samples "
            f"({t['mean_tokens_per_sample']} tokens each); bf16 autocast: softrec {t['bf16_autocast']['softrec']}, "
            "plain False"))
        rows.append((
            "SOFT step vs SFT step (s)", _num(t["soft"]["step_seconds"]["median"]),
            _num(t["softrec"]["step_seconds"]["median"]) + " (SFT step)", _x(t["soft_step_ratio"]),
            "lambda 0.5: real and distilled targets in one packed forward (reference: two passes, >= 2x)"))
    if s := r.get("soft_epoch"):
        rows.append((
            "SOFT epoch vs SFT epoch (s)", _num(s["soft"]["epoch_seconds"]["median"]),
            _num(s["sft"]["epoch_seconds"]["median"]) + " (SFT epoch)", _x(s["ratio"]),
            f"{s['samples']} samples, median over {s['epochs']} epochs; lambdas "
            f"{[round(x, 3) if x is not None else None for x in s['soft']['lambdas']]}; probe of {s['probe_size']} "
            f"prompts: {', '.join(_num(x) for x in s['soft']['probe_seconds'])} s (the first, d_0, once per run)"))
        d = s["distillation"]
        rows.append((
            "self-distillation prompts/s", _num(d["prompts_per_s"]), "-", "-",
            f"{s['samples']} samples in {_num(d['seconds'])} s ({d['beams']} beams, <= {d['max_new_tokens']} "
            f"new tokens); whole SOFT stage (distil + train) / SFT run: {_x(s['pipeline_ratio'])}"))
    if d := r.get("decoding"):
        rows.append((
            "constrained decoding prompts/s", _num(d["softrec"]["prompts_per_s"]["median"]),
            _num(d["baseline"]["prompts_per_s"]["median"]) + " (prefix_allowed_tokens_fn + dict trie)",
            _x(d["ratio"]),
            f"identical rankings {d['identical_rankings']}/{d['prompts']}; {d['beams']} beams, batch "
            f"{d['batch_size']}, {d['catalogue_titles']} titles"))
    if e := r.get("evaluation"):
        rows.append((
            "evaluation prompts/s", _num(e["softrec"]["prompts_per_s"]["median"]),
            _num(e["decoding_only"]["prompts_per_s"]["median"]) + " (its decoding alone)", _x(e["ratio"]),
            f"{e['prompts']} prompts, {e['grounding']} grounding, {e['beams']} beams, {e['model']}; catalogue "
            f"embeddings {_num(e['catalogue_embedding_seconds'])} s (once per model and catalogue, cached)"))
    if g := r.get("generation"):
        for stage in ("evaluation", "distillation"):
            x = g[stage]
            rows.append((
                f"{stage} prompts/s, engine vs plain generate", _num(x["engine_prompts_per_s"]),
                _num(x["plain_prompts_per_s"]) + " (model.generate, fp32, adapter unmerged, batch 8)", _x(x["ratio"]),
                f"identical top beams {x['identical_top_beams']}/{x['prompts']}; 4 beams, <= 64 new tokens; engine "
                f"{x['engine_dtype']}, {_num(x['engine_gflop_per_s'])} GFLOP/s executed"))
    if m := r.get("mfu"):
        peaks = m["peak_gflops"]
        rows.append((
            "MFU of a training step", f"{m['softrec']['mfu']['median']:.2%}",
            f"{m['plain']['mfu']['median']:.2%} (plain HF Trainer)", _x(m["ratio"]),
            f"vs peak {m['softrec']['peak_dtype']} (softrec) / {m['plain']['peak_dtype']} (plain); achieved "
            f"{_num(m['softrec']['achieved_gflops']['median'])} / {_num(m['plain']['achieved_gflops']['median'])} GFLOP/s"))
        rows.append((
            "matmul peak GFLOP/s", f"{_num(peaks['bfloat16']['median'])} bf16",
            f"{_num(peaks['float32']['median'])} fp32", _x(ratio(peaks["bfloat16"]["median"], peaks["float32"]["median"])),
            f"{peaks['float32']['size']}^2 matmuls, median of {len(peaks['float32']['repeats'])} repeats, "
            f"{m['threads']} threads"))
    return rows


def render_markdown(r: dict[str, Any]) -> str:
    from softrec.bench import describe

    mach = r["machine"]
    lines = [
        "# softrec bench speed", "",
        f"- command: `{r['command']}`",
        f"- date: {mach['date']}",
        f"- machine: {describe(mach)}; measured on {mach['device']}, native CPU bf16: {mach['cpu_native_bf16']}",
        f"- model {r['settings']['model']}, data {r['settings']['dataset']}",
    ]
    if not r.get("complete"):
        lines.append("- INCOMPLETE: sections still to run: " + ", ".join(r.get("pending", [])))
    lines += ["", "| measurement | softrec | baseline | ratio | notes |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(r)]
    lines += ["", "Medians over the repeats in results.json (each section names its unit). "
              "Ratios are softrec / baseline (for times: above 1 is slower).", "",
              f"FLOPs: {FLOP_FORMULA}.", ""]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any]) -> None:
    from softrec.runs import atomic_write_json, atomic_write_text

    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", render_markdown(results))


# ---------------------------------------------------------------- data and the command
def resolve_data(data: Path | None, sizes: dict[str, int], seed: int, work: Path, log: Log) -> Any:
    """A prepared dataset with exactly the benchmark's train and test samples (stages such as
    distillation work on a whole split). Source: --data, else amazon-books from the shared data
    folder (as `softrec data prepare --dataset amazon-books` finds it), else the built-in demo."""
    from softrec.config import DataConfig
    from softrec.data.dataset import PreparedDataset, write_prepared
    from softrec.data.protocol import prepare_dataset
    from softrec.data.readers import data_dir
    from softrec.data.subsets import subset

    n_train, n_test = max(sizes["train_samples"], sizes["epoch_samples"]), sizes["prompts"]
    if data is not None:
        if not Path(data).is_dir():
            raise UserError(f"--data {data}: no such directory (prepare one with `softrec data prepare`)")
        source = PreparedDataset.load(data)
    else:
        root = data_dir()
        name = "amazon-books" if root is not None and (root / "amazon-books").exists() else "demo"
        log(f"  preparing {name} ({n_train} train, {n_test} test samples)")
        config = DataConfig(dataset=name, train_size=n_train, valid_size=8, test_size=n_test, seed=seed)
        source = prepare_dataset(config, work / f"data-{name}-{n_train}-{n_test}")
    splits = {
        "train": subset(source.split("train"), n_train, seed),
        "valid": source.split("valid")[:8],
        "test": source.split("test")[:n_test],
    }
    if len(splits["train"]) < n_train or len(splits["test"]) < n_test:
        raise UserError(f"{source.path}: has {len(splits['train'])} train and {len(splits['test'])} test "
                        f"samples; the benchmark needs {n_train} and {n_test} (lower --train-samples/--prompts)")
    return write_prepared(work / "data", name=source.name, domain=source.domain, catalogue=source.catalogue,
                          splits=splits, stats={"benchmark_subset_of": str(source.path)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where results.json and results.md go")
    parser.add_argument("--model", default="gemma-3-270m", metavar="NAME_OR_PATH",
                        help="backbone (default gemma-3-270m; tiny for a seconds-long smoke run)")
    parser.add_argument("--data", type=Path, metavar="PREPARED_DIR",
                        help="prepared dataset (default: amazon-books from the shared data folder, else demo)")
    parser.add_argument("--quick", action="store_true", help="smallest sizes: a smoke run, not a measurement")
    sizes = parser.add_argument_group("sizes (defaults: full run / --quick)")
    for flag, text in (
        ("train-samples", "training samples of the train section (one pass)"),
        ("epoch-samples", "samples of each SFT/SOFT epoch (and of distillation)"),
        ("micro-batch", "samples per optimizer step in the train section"),
        ("warmup", "first optimizer steps not timed in the train section"),
        ("epochs", "SFT and SOFT epochs (each epoch is one repeat)"),
        ("prompts", "test prompts for decoding and evaluation"),
        ("batch-size", "prompts per generate call (eval.batch_size, also for distillation and probes)"),
        ("repeats", "matmul peak repeats"),
        ("matmul-size", "side of the square matmuls of the peak"),
    ):
        key = flag.replace("-", "_")
        sizes.add_argument(f"--{flag}", type=int, metavar="N", help=f"{text} ({DEFAULTS[key]} / {QUICK[key]})")
    sizes.add_argument("--beams", type=int, metavar="N", help="beams for decoding and evaluation (eval.num_beams, 4)")
    sizes.add_argument("--probe-size", type=int, metavar="N",
                        help="SOFT probe set (default: epoch samples x 256/4096, the reference ratio, at least 1)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's choice)")
    parser.add_argument("--work", type=Path, metavar="DIR",
                        help="scratch folder for prepared data and runs (default: a temporary folder)")
    add_config_options(parser)
    parser.set_defaults(func=run)


def resolve_sizes(args: argparse.Namespace) -> dict[str, int]:
    base = QUICK if args.quick else DEFAULTS
    sizes = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in base.items()}
    for key, value in sizes.items():
        if value < (0 if key == "warmup" else 1):
            raise UserError(f"--{key.replace('_', '-')}: expected a positive number, got {value}")
    return sizes


def canonical_command(args: argparse.Namespace, sizes: dict[str, int], probe: int) -> str:
    """The command with every size spelled out (reruns the same measurement)."""
    parts = ["softrec", "bench", "speed", "--out", str(args.out), "--model", args.model]
    if args.data:
        parts += ["--data", str(args.data)]
    for key, value in sizes.items():
        parts += [f"--{key.replace('_', '-')}", str(value)]
    parts += ["--probe-size", str(probe)]
    for name in ("beams", "threads"):
        if getattr(args, name):
            parts += [f"--{name}", str(getattr(args, name))]
    for item in args.overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench speed {time.perf_counter() - started:7.1f}s] {message}", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = resolve_sizes(args)
    probe = args.probe_size or max(1, round(sizes["epoch_samples"] * REFERENCE_PROBE / REFERENCE_TRAIN))
    config = config_from_args(args, {
        "model.name": args.model, "train.micro_batch": sizes["micro_batch"],
        "eval.batch_size": sizes["batch_size"], "eval.num_beams": args.beams,
    })
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softrec-bench-speed-")))
        else:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        dataset = resolve_data(args.data, sizes, config.data.seed, work, log)
        results: dict[str, Any] = {
            "machine": machine(),
            "command": canonical_command(args, sizes, probe),
            "argv": sys.argv,
            "settings": {"model": config.model.name, "dataset": dataset.name, "sizes": sizes,
                         "probe_size": probe, "config": config.model_dump(mode="json")},
            "complete": False,
        }
        bench = Bench(config, dataset, work, sizes, probe, log, results)
        pending = list(SECTIONS)
        for name, section in SECTIONS.items():
            results["pending"] = pending = pending[1:]
            log(f"{name} ...")
            with stopwatch() as t:
                results[name] = section(bench)
            results[name]["section_seconds"] = t[0]
            log(f"{name}: ratio {_x(results[name]['ratio'])} ({t[0]:.1f} s)")
            write_results(args.out, results)
        results["complete"] = True
        results.pop("pending")
        results["total_seconds"] = time.perf_counter() - started
        write_results(args.out, results)
    print(render_markdown(results))
    log(f"results in {args.out}/results.json and results.md")
    return 0
