"""Preflight: estimate peak memory and time of a long stage before starting it, refuse what cannot fit.

The estimate needs no weights: the backbone's shape comes from a small table (the registry's GGUF
backbones), its config.json (a local HF checkpoint) or the tiny test model's config. Memory:

    weights      params x bytes per param (model.dtype; float32 by default)
    trainable    LoRA: layers x targets x r x (in + out); full fine-tuning: every parameter
    grads+AdamW  trainable x 4 bytes x 3 (gradient, two moments)
    activations  micro_batch x seq x layers x (12 hidden + 2 intermediate [+ heads x seq on CPU]) x 4
                 seq: the longest prompt + response among the samples the run trains on (a SOFT row's
                 distilled target included: `longest_training_tokens`)
    LM head      micro_batch x labelled tokens x vocab x 4 x 3 (logits, softmax, gradient); every
                 position instead of the labelled ones when train.logits_at_labels_only is off
    heap         CPU training only: 1 GiB + 0.3 x (activations + LM head), what glibc's main heap keeps
                 (`heap_retention`; 1 GiB under tcmalloc, jemalloc or a small MALLOC_MMAP_THRESHOLD_)
    generation   batch x beams x (prompt + new tokens) x layers x 2 x kv_dim x 4 (KV cache)
                 + batch x beams x vocab x 4 x 2 (last logits)

Time: FLOPs (about 2 x params per token forward, 4x for LoRA training, 6x for full fine-tuning)
divided by the device's effective FLOP/s: a table for known GPUs, and on CPU a timed fp32 1024^2
matmul (the median of short bursts) scaled by a factor per kind of work and the dtype it runs in. FLOPs
count what the code executes: the decoder layers for every token (4x their weights for LoRA
training, 6x for full fine-tuning), the LM head only at response tokens (training) or at each new
token of each beam (generation, prompts prefilled once), never the embedding lookup; SOFT adds its
curriculum's probe decoding (before training and after every epoch). The fp32 factors were fitted
on `make run` (demo, 128 training samples) on a quiet 2-core AMD EPYC (Zen 3, fp32, 2026-11-30):
SFT 16 steps in 6.1 min (~105 tokens/s), distillation 128 prompts in 4.0 min, evaluation 100
prompts in 3.3 min, 1024^2 matmul ~80 GFLOP/s. The bf16 factors were fitted on `make run` (demo, 64
training samples, LoRA lr 5e-4) on a 2-core Intel Xeon with AMX (2026-12-05, fresh clone, empty cache):
SFT 78 s (~360 tokens/s), SOFT 80 s, distillation of 64 prompts 16 s, evaluations of 48 prompts
24 and 15 s (3.6 min without the conversion; these factors then gave ~3.1), fp32 1024^2 matmul 225-270 GFLOP/s.
The bf16 training factor was refitted (2026-12-06, same kind of Intel CPU) once training was priced on
the tokens it computes: real tokenizer counts and random micro-batches padded to their longest
(`expected_longest`). Counted by characters and unpadded, a cpu-medium amazon-industrial SFT read
~63 min against ~3 h (its prompts tokenize 17% longer than estimated and pad to 1.7x their mean);
refitted, 4 steps of it (128 samples, 117 s measured) and the demo SFT (2 epochs of 64, 41 s) are
priced at 103 s and 45 s. Grounding embeds the catalogue once, in fp32 (3686 industrial titles of ~27
tokens: ~2 min), which the estimate counts once per run.

The GPU rates are a table of realistic (not peak) bf16 rates, not measured here. Expect a factor of
2 either way; the job is to flag a run that will take a day or cannot fit, before it starts.

`softrec train|distill|evaluate|run` print the estimate; `--no-preflight` (or SOFTREC_NO_PREFLIGHT=1)
skips it. Memory above `SAFETY` x available -> UserError naming the setting to change.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.methods import is_soft
from softrec.models.token_counts import (
    TIME_PROBE,
    expected_longest,
    longest_training_tokens,
    prompt_tokens,
    sample_lengths,
    title_tokens,
)

GiB = 1 << 30
SAFETY = 0.9  # refuse above this share of the available memory

# Shapes of the registry backbones (from their converted config.json), so no weights are read.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "gemma-3-270m": {"params": 268_098_176, "hidden": 640, "layers": 18, "heads": 4, "kv_dim": 256,
                     "intermediate": 2048, "vocab": 262_144},
    "smollm2-135m": {"params": 134_515_008, "hidden": 576, "layers": 30, "heads": 9, "kv_dim": 192,
                     "intermediate": 1536, "vocab": 49_152},
}
# Dense bf16 FLOP/s at a realistic utilisation for LLM training of small models (not peak).
GPU_FLOPS = {"H100": 250e12, "H200": 250e12, "A100": 100e12, "L4": 40e12, "A10": 40e12, "T4": 15e12}
# The work's rate under the FLOP model below as a multiple of the measured fp32 1024^2 matmul rate, by
# the dtype the work runs in (fitted on `make run`, see the docstring). bf16 work is anchored to the
# fp32 rate too: on a shared AMX VM the bf16 rate of short bursts read 440-1110 GFLOP/s (2048^2:
# 760-2200) from one minute to the next while training held 320-380 tokens/s and the fp32 rate
# 225-245, so the bf16 reading swung the estimate 2.5x and predicted nothing.
CPU_TRAIN_EFFICIENCY = {False: 0.65, True: 0.7}  # bf16 -> multiple of the fp32 matmul rate
# Generation, refitted (2026-12-06, 2-core Intel Xeon with AMX, bf16 decoding, nothing else running)
# once new tokens were priced at the steps prompts really decode (`typical_new_tokens`): a trained
# teacher's 64 amazon-industrial test prompts read 0.72, the demo's 48 read 1.0-1.13; 0.85 sits
# between. The fp32 factor (AMD, not re-measured) is the old 0.7 fitted on the demo at 32 steps,
# rescaled to the demo's FLOPs at its measured 10.8 steps (x0.53) and by the same 0.85/1.07.
CPU_GENERATE_EFFICIENCY = {False: 0.3, True: 0.85}
CPU_CATALOGUE_EFFICIENCY = 0.6  # fp32 prefill of titles: 768 industrial titles read 0.61 (same run)
GPU_GENERATE_EFFICIENCY = 0.1  # assumed, not measured
TYPICAL_RESPONSE_TOKENS = 20  # a quoted title and the end token
# Decoding steps per prompt of a trained model: the beams end at the end of a title, and with
# the reference's length penalty 1 a prompt decodes on until no running beam can beat the finished
# ones (usually the longest beam's length; a run-on to max_new_tokens). Measured (Beams.steps, 4
# beams, trained SFT teachers, 2026-12-06): 10.8 on the demo's 48 test prompts (titles 5.0 tokens,
# `title_tokens`), 42.7 on 64 amazon-industrial test prompts (titles 27.2 tokens, 16% run to 64).
# The line through the two; the constant 32 it replaces read the demo 3x high and industrial 0.75x.
STEPS_PER_TITLE_TOKEN, STEPS_OVER_TITLE = 1.43, 3.7
BYTES = {"float32": 4, "auto": 4, "bfloat16": 2, "float16": 2}


class UnknownModel(UserError):
    """No shape for this backbone without loading it: the preflight is skipped, not failed."""


@dataclass
class BackboneShape:
    params: int
    hidden: int
    layers: int
    heads: int
    kv_dim: int  # key/value width per layer (num_key_value_heads x head_dim)
    intermediate: int
    vocab: int


@dataclass
class Estimate:
    stage: str
    model: str
    device: str
    memory: dict[str, int]  # part -> bytes
    seconds: float
    available: int  # bytes of memory the device has free
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.memory.values())

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.memory.items() if v >= GiB / 1000)
        return (
            f"preflight {self.stage} ({self.model} on {self.device}): peak memory ~{self.peak / GiB:.2f} GiB "
            f"of {self.available / GiB:.1f} GiB available [{parts}]; time ~{duration(self.seconds)}"
            + "".join(f"; {n}" for n in self.notes)
        )


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- model shape
def model_shape(name: str) -> BackboneShape:
    """Parameter count and dimensions without loading weights."""
    if name in KNOWN_MODELS:
        return BackboneShape(**KNOWN_MODELS[name])
    if name == "tiny":
        from softrec.models.tiny import tiny_model

        model = tiny_model()
        return _shape_from_config(model.config.to_dict(), sum(p.numel() for p in model.parameters()))
    path = Path(name)
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return _shape_from_config(config, _safetensors_params(path))
    raise UnknownModel(f"preflight: no shape known for model '{name}' without loading it; estimate skipped")


def _shape_from_config(config: dict[str, Any], params: int | None) -> BackboneShape:
    config = config.get("text_config", config)
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    heads = int(config.get("num_attention_heads", 1))
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv_dim = int(config.get("num_key_value_heads", heads)) * head_dim
    inter = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config["vocab_size"])
    if params is None:  # embeddings + attention (q, o full; k, v at kv width) + gated MLP per layer
        params = vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter)
    return BackboneShape(params, hidden, layers, heads, kv_dim, inter, vocab)


def _safetensors_params(folder: Path) -> int | None:
    """Parameter count from safetensors headers (8-byte length + JSON), no tensor is read."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


# ---------------------------------------------------------------- device
def device_name() -> str:
    import torch

    if os.environ.get("SOFTREC_DEVICE", "").startswith("cpu") or not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(int(os.environ.get("LOCAL_RANK", "0")))


def available_memory(device: str) -> int:
    """Free bytes: GPU via torch.cuda.mem_get_info, CPU via psutil (or /proc/meminfo)."""
    if device != "cpu":
        import torch

        return int(torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def device_flops(device: str, *, generate: bool = False, bf16: bool = False, fp32: float | None = None,
                 catalogue: bool = False) -> float:
    """Effective FLOP/s: the GPU table, or a short timed fp32 matmul on this CPU (`fp32`: a rate timed
    earlier) times a factor for the kind of work (training, decoding, or the catalogue's fp32
    embedding for grounding) and the dtype it runs in (bf16 where the CPU computes it natively and
    the setting asks for it)."""
    if device != "cpu":
        rate = next((flops for name, flops in GPU_FLOPS.items() if name in device), 50e12)
        return rate * (GPU_GENERATE_EFFICIENCY if generate or catalogue else 1.0)
    fp32 = fp32 or cpu_matmul_flops()
    if catalogue:
        return fp32 * CPU_CATALOGUE_EFFICIENCY
    return fp32 * (CPU_GENERATE_EFFICIENCY if generate else CPU_TRAIN_EFFICIENCY)[bf16]


def typical_new_tokens(title_tokens: float, max_new_tokens: int) -> float:
    """The decoding steps a trained model's prompt takes, from the catalogue's mean title length
    (see STEPS_PER_TITLE_TOKEN); an untrained one runs on to `max_new_tokens`."""
    return min(float(max_new_tokens), STEPS_PER_TITLE_TOKEN * title_tokens + STEPS_OVER_TITLE)


_CPU_FLOPS: dict[str, float] = {}  # "fp32" -> FLOP/s, measured once per process


def cpu_matmul_flops(n: int = 1024, bursts: int = 7, seconds: float = 0.03) -> float:
    """The median fp32 rate of `bursts` short timed runs of n^2 matmuls: on a shared 2-core VM one
    burst can run 2.5x faster than the usual rate, and a single 0.1 s timing made the estimate swing
    2x. (bf16 is not timed: see CPU_TRAIN_EFFICIENCY.)"""
    if "fp32" not in _CPU_FLOPS:
        import statistics

        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        rates = []
        for _ in range(bursts):
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                a @ b
                count += 1
            rates.append(2 * n**3 * count / elapsed)
        _CPU_FLOPS["fp32"] = statistics.median(rates)
    return _CPU_FLOPS["fp32"]


# ---------------------------------------------------------------- estimates
def train_flops_per_token(shape: BackboneShape, *, lora: bool, soft: bool, response_tokens: float,
                          mean_tokens: float) -> float:
    """FLOPs per trained token: the decoder layers at every token (4x their weights for LoRA, 6x for
    full fine-tuning), the LM head only at the response's tokens."""
    head = shape.vocab * shape.hidden
    body = shape.params - head  # the (tied) embedding is a lookup; the head runs at labelled positions only
    flops = (4 if lora else 6) * body + 6 * head * response_tokens / mean_tokens
    return flops * 1.15 if soft else flops  # the packed second response (measured SOFT step / SFT step: 1.09-1.16)


def generation_flops(shape: BackboneShape, n_samples: int, *, prompt_tokens: float, num_beams: int,
                     new_tokens: float) -> float:
    """The engine's FLOPs: each prompt prefilled once through the decoder layers (the LM head at its
    last token), then every beam's new tokens through the layers and the full LM head. Grounding's
    catalogue embedding is `catalogue_flops`, priced apart (fp32, once per run)."""
    head = shape.vocab * shape.hidden
    body = shape.params - head  # the embedding matrix is the (tied) head; a lookup costs nothing
    return 2 * n_samples * (prompt_tokens * body + head + num_beams * new_tokens * (body + head))


def catalogue_flops(shape: BackboneShape, titles: int, title_tokens: float) -> float:
    """Every title through the frozen base's decoder layers once (L2 grounding; cached on disk after)."""
    return 2 * titles * title_tokens * (shape.params - shape.vocab * shape.hidden)


def estimate_train(config: Any, dataset: Any, *, n_samples: int | None = None, device: str | None = None,
                   world_size: int | None = None, distilled: dict[str, str] | None = None) -> Estimate:
    """Peak memory per process and wall time of `train_llm` with these settings (`distilled`: a SOFT
    run's targets, whose length the memory is priced at too)."""
    device = device or device_name()
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    shape = model_shape(config.model.name)
    train = config.train
    seq = longest_training_tokens(dataset, config, distilled)
    per_param = BYTES[config.model.dtype]
    act = 2 if train.bf16 == "on" or (train.bf16 == "auto" and device != "cpu") else 4
    lora = train.lora
    if lora.enabled:
        trainable = shape.layers * len(lora.target_modules) * lora.r * (shape.hidden + max(shape.hidden, shape.kv_dim))
    else:
        trainable = shape.params
    micro = train.micro_batch * (2 if is_soft(config.train.method) else 1)  # SOFT rows carry both targets
    per_token = 12 * shape.hidden + 2 * shape.intermediate + (shape.heads * seq if device == "cpu" else 0)
    labelled = min(seq, 48) if train.logits_at_labels_only else seq  # a title response is ~10-40 tokens
    memory = {
        "weights": shape.params * per_param,
        "grads+optimizer": trainable * 4 * 3,
        "activations": micro * seq * shape.layers * per_token * act,
        "lm_head": micro * labelled * shape.vocab * 4 * 3,
        "runtime": int(0.5 * GiB) if device == "cpu" else int(1.0 * GiB),  # framework (GPU: allocator slack)
    }
    if device == "cpu":
        memory["heap"] = heap_retention(memory["activations"] + memory["lm_head"])
    n = n_samples if n_samples is not None else len(dataset.split("train"))
    if train.train_samples:
        n = min(n, train.train_samples)
    lengths = sample_lengths(dataset, config, TIME_PROBE)
    # random micro-batches (the reference) pad each sample to the micro-batch's longest, and the
    # padding is computed like any token; grouped by length they pad little
    computed = sum(lengths) / len(lengths) if train.group_by_length else expected_longest(lengths, train.micro_batch)
    response = TYPICAL_RESPONSE_TOKENS if train.logits_at_labels_only else computed
    flops_per_token = train_flops_per_token(shape, lora=lora.enabled, soft=is_soft(config.train.method),
                                            response_tokens=response, mean_tokens=computed)
    from softrec.hardware import use_bf16

    bf16 = use_bf16(train.bf16, "cpu" if device == "cpu" else "cuda")
    seconds = train.epochs * n * computed * flops_per_token / (device_flops(device, bf16=bf16) * world)
    notes = [f"{n} samples x {train.epochs} epochs, ~{computed:.0f} tokens each as micro-batches of "
             f"{train.micro_batch} pad them (longest {seq})"]
    if train.validate_every_epoch:  # beam-search validation after every epoch
        n_valid = min(len(dataset.split("valid")), train.valid_samples or 1 << 62)
        ev = config.eval
        def validation(catalogue: bool) -> float:
            return estimate_generation(config, dataset, n_valid, stage="validate", num_beams=ev.num_beams,
                                       max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, device=device,
                                       catalogue=catalogue).seconds

        seconds += validation(True) + (train.epochs - 1) * validation(False)  # the catalogue is embedded once
        notes.append(f"validation on {n_valid} samples per epoch included")
    if probes := _probes(config):  # SOFT's adaptive curriculum: d_0 and one probe distance per epoch
        soft = config.soft
        seconds += probes * estimate_generation(
            config, dataset, soft.probe_size, stage="probe", num_beams=soft.distill_beams,
            max_new_tokens=soft.distill_max_new_tokens, batch_size=config.eval.batch_size, device=device,
            catalogue=False).seconds  # the probe compares generations; it grounds nothing
        notes.append(f"{probes} probes of {soft.probe_size} samples included")
    return Estimate("train", config.model.name, device, memory, seconds, available_memory(device), notes)


def heap_retention(transient: int, environ: dict[str, str] | None = None) -> int:
    """Bytes glibc's main heap keeps beyond CPU training's live tensors, whose per-step buffers
    (activations, LM-head logits) come to `transient`: blocks under its dynamic mmap threshold come
    from one heap that micro-batches of varying length fragment (benchmarks/results/malloc-threshold-
    2026-12-07.txt). An upper envelope of measured peaks over the estimate without it: short SFT
    (micro-batch 4), 5.48 GiB vs 3.77 (AMD EPYC Zen 4); cpu-medium SOFT (micro-batch 8, 4 epochs), 14.6-14.9
    GiB (Zen 4) and 16.7 (Intel Xeon AMX) vs 12.4. MALLOC_MMAP_THRESHOLD_ <= 1 MiB or a preloaded
    tcmalloc/jemalloc keeps it small (that short SFT: 4.12-4.57 GiB): only the constant is kept."""
    environ = os.environ if environ is None else environ
    threshold = environ.get("MALLOC_MMAP_THRESHOLD_", "")
    preloaded = environ.get("LD_PRELOAD", "")
    if (threshold.isdigit() and int(threshold) <= 1 << 20) or "tcmalloc" in preloaded or "jemalloc" in preloaded:
        return GiB
    return GiB + int(0.3 * transient)


def _probes(config: Any) -> int:
    """How many times SOFT's curriculum decodes its probe set in a run: before training (d_0) and after
    every epoch, when the method's scheduler needs distances; 0 otherwise."""
    from softrec.methods import PROBED_SCHEDULERS, method, scheduler_name

    name = config.train.method
    if not method(name).distilled or scheduler_name(name, config.soft.scheduler) not in PROBED_SCHEDULERS:
        return 0
    return config.train.epochs + 1


def estimate_generation(config: Any, dataset: Any, n_samples: int, *, stage: str, num_beams: int,
                        max_new_tokens: int, batch_size: int, device: str | None = None,
                        model: str | None = None, catalogue: bool = True) -> Estimate:
    """Peak memory and time of beam search over `n_samples` prompts (evaluation, distillation);
    `model` overrides config.model.name (a run's base model); `catalogue`: the time includes
    embedding the catalogue for grounding (once per process; cached on disk after, which this does
    not check: the cache key needs the weights)."""
    device = device or device_name()
    model = model or config.model.name
    shape = model_shape(model)
    seq = prompt_tokens(dataset, config) + max_new_tokens
    rows = min(batch_size, n_samples) * num_beams  # fewer prompts than a batch fill only their rows
    from softrec.hardware import use_bf16

    native = config.eval.dtype == "bfloat16" or (config.eval.dtype == "auto" and use_bf16("auto", device if device == "cpu" else "cuda"))
    memory = {
        "weights": shape.params * BYTES[config.model.dtype],
        "kv_cache": rows * seq * shape.layers * 2 * shape.kv_dim * 4,
        "logits": rows * shape.vocab * 4 * 2,
        "catalogue": len(dataset.titles) * shape.hidden * 4,
        "runtime": int(0.5 * GiB) if device == "cpu" else int(1.0 * GiB),
    }
    if native and BYTES[config.model.dtype] == 4:  # `decoding_model`'s merged bf16 copy of the weights
        memory["decoding_copy"] = shape.params * 2
    prompt = prompt_tokens(dataset, config, TIME_PROBE, mean=True)
    titles = title_tokens(dataset, config)
    steps = typical_new_tokens(titles, max_new_tokens)
    flops = generation_flops(shape, n_samples, prompt_tokens=prompt, num_beams=num_beams, new_tokens=steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    seconds = flops / (device_flops(device, generate=True, bf16=native) * world)
    # the catalogue is embedded by the fp32 base model (once; later runs read it from the disk cache)
    seconds += catalogue * catalogue_flops(shape, len(dataset.titles), titles) / device_flops(device, catalogue=True)
    notes = [f"{n_samples} prompts, {num_beams} beams, up to {max_new_tokens} new tokens (~{steps:.0f} priced for "
             f"titles of ~{titles:.0f} tokens), batch {batch_size}"]
    return Estimate(stage, model, device, memory, seconds, available_memory(device), notes)


def check(estimate: Estimate) -> None:
    """UserError naming the settings to change when the peak exceeds the available memory."""
    if estimate.available <= 0 or estimate.peak <= SAFETY * estimate.available:
        return
    biggest = max(estimate.memory, key=estimate.memory.get)
    advice = {
        "weights": "a smaller --model or model.dtype=bfloat16",
        "grads+optimizer": "LoRA (train.lora.enabled=true) or a smaller train.lora.r",
        "activations": "a smaller train.micro_batch (--micro-batch) or model.max_length",
        "lm_head": "a smaller train.micro_batch (--micro-batch), or train.logits_at_labels_only=true",
        "kv_cache": "a smaller eval.batch_size (--batch-size) or eval.num_beams",
        "logits": "a smaller eval.batch_size (--batch-size) or eval.num_beams",
        "catalogue": "a smaller catalogue",
        "runtime": "freeing memory on the device",
        "heap": "a smaller train.micro_batch (--micro-batch), or LD_PRELOAD=libtcmalloc_minimal.so.4 (docs/scaling.md)",
    }[biggest]
    raise UserError(
        f"preflight: {estimate.stage} needs ~{estimate.peak / GiB:.1f} GiB on {estimate.device} but only "
        f"{estimate.available / GiB:.1f} GiB is available (largest part: {biggest} "
        f"{estimate.memory[biggest] / GiB:.1f} GiB); lower it with {advice}, or skip this check with --no-preflight"
    )


def enabled(flag_off: bool = False) -> bool:
    return not flag_off and os.environ.get("SOFTREC_NO_PREFLIGHT", "") in ("", "0")


def cpu_busy_note(interval: float = 0.3) -> str | None:
    """A warning when other work holds more than half of this CPU right now (psutil's utilisation over
    `interval` seconds; a load average would still count the step a suite just finished), else None.
    On 2 cores two torch processes thrash: `make run` beside a suite's training ran its SFT ~10x and its
    distillation ~17x slower than alone (2-core Intel Xeon, 2026-12-07)."""
    import psutil

    busy = psutil.cpu_percent(interval=interval)
    if busy <= 50:
        return None
    return (f"note: other work is using {busy:.0f}% of this CPU's {os.cpu_count()} cores: this run shares them "
            "and slows down with it, and the timed rate behind this estimate reads low")


def run_preflight(estimate: Estimate, *, printer: Any = print) -> Estimate:
    """Print the estimate (rank 0 only), with `cpu_busy_note` on a busy CPU, and refuse when it cannot fit."""
    if int(os.environ.get("RANK", "0")) == 0:
        if estimate.device == "cpu" and (busy := cpu_busy_note()):
            estimate.notes.append(busy)
        printer(estimate.summary())
    check(estimate)
    return estimate


def preflight_train(config: Any, dataset: Any, *, skip: bool = False,
                    distilled: dict[str, str] | None = None) -> Estimate | None:
    if not enabled(skip):
        return None
    try:
        estimate = estimate_train(config, dataset, distilled=distilled)
    except UnknownModel as exc:
        print(exc)
        return None
    return run_preflight(estimate)


def preflight_generation(config: Any, dataset: Any, n_samples: int, *, stage: str, skip: bool = False,
                         num_beams: int | None = None, max_new_tokens: int | None = None,
                         model: str | None = None) -> Estimate | None:
    if not enabled(skip):
        return None
    try:
        estimate = estimate_generation(
            config, dataset, n_samples, stage=stage, model=model, num_beams=num_beams or config.eval.num_beams,
            max_new_tokens=max_new_tokens or config.eval.max_new_tokens, batch_size=config.eval.batch_size,
        )
    except UnknownModel as exc:
        print(exc)
        return None
    return run_preflight(estimate)
