"""The generation engine on a GPU: parity with plain `model.generate` and throughput, in one run.

    python3 benchmarks/device_generation.py --kit .devkit --out $OUT      # on the device (H200)
    .venv/bin/python benchmarks/device_generation.py --device cpu --layers 2 --prompts 4 \\
        --max-new-tokens 8 --engine-prompts 8 --engine-batches 8,4 --constrained-prompts 2 \\
        --engine-dtype float32 --out /tmp/devgen      # a CPU smoke run (~3 min on 2 cores)

The kit (`benchmarks/device_kit.py` builds it) holds Gemma 3 270M's config and tokenizer and real
BIGRec prompts, not its weights: the model is the real architecture with seeded random weights
(`--init-std`; the stop tokens' rows scaled by `--stop-boost` so that beams end at different steps,
as a trained model's do) under a seeded LoRA r=8 on q/v with non-zero B (as bench_generation's), so
folding the adapter in changes the weights. Random weights decode nonsense, but they exercise every
code path at the real shapes (262k vocabulary, 18 layers with sliding and full attention, ~170-token
prompts), which is what parity and speed depend on.

Sections, in order, each written to results.json / results.md as soon as it is done (a run cut short
keeps what it measured); one that would overrun `--budget-s` is skipped and says so:
1. roofline: the measured bf16 matmul rate (8192^3 on a GPU) next to the spec (`--spec-tflops`);
2. plain: `generate_plain`, i.e. `model.generate` as a user runs it (fp32, adapter unmerged,
   `--beams` 4, `--max-new-tokens` 64, batches of `--plain-batch` 8) on `--prompts` prompts: timed;
3. parity fp32: the engine (LoRA folded in place, fp32) on the same prompts; `identical top beams`;
4. parity bf16: the engine in bf16 against plain `generate` in bf16, both on the adapter model cast
   to bf16 (unmerged, as `softrec.bench.generation` compares) and on the merged bf16 copy the
   engine decodes (the same weights: what is left is the engine's own rounding); how many differ;
5. throughput: the engine in bf16 (the adapter folded into a bf16 copy once, as `dtype="auto"`
   does on a GPU) at each of `--engine-batches` prompts per batch on `--engine-prompts` prompts,
   after a warm-up at that batch size; prompts/s, the FLOPs `softrec.bench.generation.FlopCounter`
   counts over the wall time against the matmul peak, peak GPU memory;
6. constrained: catalogue-constrained decoding (`TitleTrie`) against `generate` with
   `prefix_allowed_tokens_fn` over a dict trie, fp32, `--constrained-prompts` prompts;
7. head chunk: the best batch size again with the LM head in chunks of `--head-chunk` tokens instead
   of 4096 (sized for CPU caches; a GPU may prefer fewer, larger matmuls).
The last line is `speedup: X`: the best engine prompts/s (its one-off bf16 fold included) over plain
`generate`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
STOP_TOKENS = (1, 106)  # <eos>, <end_of_turn>: the checkpoint's generation_config eos ids


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- the kit
def load_tokenizer(kit: Path) -> Any:
    from transformers import AutoTokenizer

    from softrec.models.registry import prepare_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="devkit-tokenizer-"))
    with gzip.open(kit / "tokenizer.json.gz", "rb") as raw, (folder / "tokenizer.json").open("wb") as out:
        shutil.copyfileobj(raw, out)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (kit / name).exists():
            shutil.copyfile(kit / name, folder / name)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


def build_model(kit: Path, args: argparse.Namespace, tokenizer: Any) -> Any:
    """Gemma 3 270M's architecture (first `--layers` layers) with seeded weights and a seeded LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(kit))
    if args.layers:
        config.num_hidden_layers = args.layers
        config.layer_types = config.layer_types[: args.layers]
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(str(kit))
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):  # tied embedding/head: drawn once
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * args.init_std)
            else:  # RMSNorm scales (Gemma multiplies by 1 + w): varied, or every prompt decodes alike
                param.copy_(torch.randn(param.shape, generator=generator) * args.norm_std)
        embedding = model.get_input_embeddings().weight
        stops = [t for t in STOP_TOKENS if t < embedding.shape[0]]
        embedding[stops] *= args.stop_boost
    torch.manual_seed(args.seed)  # peft draws lora_A from the global generator
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter is not a no-op: give B the scale training reaches
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * args.lora_b_std)
    return model.to(args.device).eval()


# ---------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[list[float]]:
    """`with stopwatch(device) as t:` then t[0] is the block's seconds, queued GPU work included."""
    out: list[float] = []
    sync(device)
    start = time.perf_counter()
    yield out
    sync(device)
    out.append(time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """TFLOP/s of square matmuls in `dtype`, the median of 5 repeats (8192^3 on a GPU, 1024^3 on a CPU)."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    with stopwatch(device) as one:
        a @ b
    count = max(1, round(0.2 / max(one[0], 1e-6)))
    rates = []
    for _ in range(5):
        with stopwatch(device) as t:
            for _ in range(count):
                a @ b
        rates.append(2 * size**3 * count / t[0] / 1e12)
    return {"tflop_per_s": statistics.median(rates), "repeats": rates, "size": size,
            "dtype": str(dtype).removeprefix("torch.")}


def compare(ours: list[Any], reference: list[Any]) -> dict[str, Any]:
    same_top = sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(ours, reference, strict=True))
    same_all = sum(a.token_ids == b.token_ids for a, b in zip(ours, reference, strict=True))
    return {"prompts": len(ours), "identical_top_beams": same_top, "identical_all_beams": same_all,
            "differing_prompts": [i for i, (a, b) in enumerate(zip(ours, reference, strict=True))
                                  if a.token_ids[0] != b.token_ids[0]]}


def beam_shape(beams: list[Any], stops: set[int]) -> dict[str, Any]:
    """How non-degenerate the seeded model's output is: distinct top beams, their lengths, stops."""
    tops = [tuple(b.token_ids[0]) for b in beams]
    return {"distinct_top_beams": len(set(tops)), "mean_top_beam_tokens": statistics.mean(len(t) for t in tops),
            "top_beams_ending_with_stop": sum(bool(t) and t[-1] in stops for t in tops)}


class Budget:
    """Wall-clock budget of the whole script: a section runs only if its estimate fits."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate: float) -> bool:
        return estimate < self.left()


# ---------------------------------------------------------------- the run
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", default=str(ROOT / ".devkit"), help="the folder device_kit.py wrote")
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="results.json/results.md (default $OUT)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N decoder layers (CPU tests)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts for plain generate and the parity checks")
    parser.add_argument("--engine-prompts", type=int, default=1024, help="prompts per throughput measurement")
    parser.add_argument("--engine-batches", default="1024,512,128,32", help="prompts per batch, in the order run")
    parser.add_argument("--constrained-prompts", type=int, default=16)
    parser.add_argument("--head-chunk", type=int, default=32768, help="0: skip section 7")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--plain-batch", type=int, default=8)
    parser.add_argument("--parity-batch", type=int, default=32, help="the engine's batch in the parity checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-std", type=float, default=0.05, help="std of every seeded weight matrix")
    parser.add_argument("--norm-std", type=float, default=1.0, help="std of the seeded RMSNorm weights")
    parser.add_argument("--stop-boost", type=float, default=4.0, help="scale of the stop tokens' embedding rows")
    parser.add_argument("--lora-b-std", type=float, default=0.01)
    parser.add_argument("--engine-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="the throughput sections' dtype (float32 for a quick CPU test)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip sections that would end later")
    parser.add_argument("--spec-tflops", type=float, default=989.0, help="the device's dense bf16 spec (H200 SXM)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    kit = Path(args.kit)
    torch.set_float32_matmul_precision("highest")  # fp32 parity means fp32 matmuls, not TF32

    from softrec.bench.generation import FlopCounter, Shape
    from softrec.inference import head as head_module
    from softrec.inference.generate import (
        decoding_model,
        generate_baseline,
        generate_beam_ids,
        generate_plain,
        stop_token_ids,
    )
    from softrec.inference.trie import DictTrie, TitleTrie
    from softrec.models.wrappers import causal_lm_of

    tokenizer = load_tokenizer(kit)
    prompts_all = [json.loads(line)["prompt"] for line in (kit / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    model = build_model(kit, args, tokenizer)
    stops = set(stop_token_ids(model, tokenizer))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    commit = (kit / "commit.txt").read_text().strip() if (kit / "commit.txt").exists() else None
    import transformers

    results: dict[str, Any] = {
        "machine": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": str(device), "gpu": gpu,
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                    "python": platform.python_version(), "commit": commit},
        "command": "python3 benchmarks/device_generation.py " + shlex.join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "kit")},
        "model": {"architecture": "Gemma 3 270M config, seeded random weights", "layers": model.config.num_hidden_layers,
                  "parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
                  "adapter": f"LoRA r=8 q/v, B ~ N(0, {args.lora_b_std})"},
        "sections": {},
        "skipped": [],
    }
    sections = results["sections"]

    def save() -> None:
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            (out / "results.md").write_text(render(results), encoding="utf-8")

    def skip(name: str, why: str) -> None:
        results["skipped"].append(f"{name}: {why}")
        log(f"{name}: skipped ({why})")
        save()

    log(f"{gpu or device}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{results['model']['parameters'] / 1e6:.0f}M parameters, {model.config.num_hidden_layers} layers; "
        f"{len(prompts_all)} prompts in the kit; set-up {args.budget_s - budget.left():.0f} s")

    # 1. roofline
    engine_dtype = getattr(torch, args.engine_dtype)
    sections["roofline"] = {"matmul": matmul_peak(device, engine_dtype), "spec_tflop_per_s": args.spec_tflops}
    peak = sections["roofline"]["matmul"]["tflop_per_s"]
    log(f"roofline: {args.engine_dtype} matmul {peak:.2f} TFLOP/s measured (bf16 spec {args.spec_tflops:.0f})")
    save()

    settings = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
    prompts = prompts_all[: args.prompts]
    # warm-ups: CUDA context, kernels and cuBLAS plans for both paths, kept out of every timing
    warm = {"num_beams": args.beams, "max_new_tokens": 2}
    generate_plain(model, tokenizer, prompts[:2], batch_size=2, **warm)
    generate_beam_ids(model, tokenizer, prompts[:2], batch_size=2, dtype="float32", **warm)

    # 2. plain generate as a user runs it
    with stopwatch(device) as plain_s:
        plain = generate_plain(model, tokenizer, prompts, batch_size=args.plain_batch, **settings)
    sections["plain"] = {"prompts": len(prompts), "seconds": plain_s[0], "prompts_per_s": len(prompts) / plain_s[0],
                         "dtype": "float32", "batch": args.plain_batch, **beam_shape(plain, stops)}
    log(f"plain generate fp32: {len(prompts)} prompts in {plain_s[0]:.1f} s = {sections['plain']['prompts_per_s']:.2f} "
        f"prompts/s; {sections['plain']['distinct_top_beams']} distinct top beams, mean "
        f"{sections['plain']['mean_top_beam_tokens']:.1f} tokens, {sections['plain']['top_beams_ending_with_stop']} end with a stop token")
    save()

    # 3. parity fp32
    with stopwatch(device) as engine_s:
        ours = generate_beam_ids(model, tokenizer, prompts, batch_size=args.parity_batch, dtype="float32", **settings)
    sections["parity_fp32"] = {**compare(ours, plain), "engine_seconds": engine_s[0]}
    log(f"parity fp32: identical top beams {sections['parity_fp32']['identical_top_beams']}/{len(prompts)}, "
        f"all beams {sections['parity_fp32']['identical_all_beams']}/{len(prompts)} (engine {engine_s[0]:.1f} s)")
    save()

    # 4. parity bf16 (both sides in bf16)
    bf16 = torch.bfloat16
    if budget.allows(3 * plain_s[0] + 30):
        with stopwatch(device) as fold_s:
            with decoding_model(model, bf16) as twin:  # the copy the engine decodes: LoRA folded, then cast
                merged_bf16 = twin
        cast = copy.deepcopy(model).to(bf16)  # the adapter model cast to bf16, unmerged
        generate_plain(cast, tokenizer, prompts[:2], batch_size=2, **warm)
        with stopwatch(device) as plain_bf16_s:
            plain_cast = generate_plain(cast, tokenizer, prompts, batch_size=args.plain_batch, **settings)
        del cast
        plain_merged = generate_plain(merged_bf16, tokenizer, prompts, batch_size=args.plain_batch, **settings)
        ours_bf16 = generate_beam_ids(model, tokenizer, prompts, batch_size=args.parity_batch, dtype="bfloat16", **settings)
        sections["parity_bf16"] = {
            "vs_unmerged_bf16": compare(ours_bf16, plain_cast),
            "vs_merged_bf16": compare(ours_bf16, plain_merged),
            "plain_bf16_unmerged_prompts_per_s": len(prompts) / plain_bf16_s[0],
            "fold_seconds": fold_s[0],
        }
        p = sections["parity_bf16"]
        log(f"parity bf16: top beams differ in {len(prompts) - p['vs_unmerged_bf16']['identical_top_beams']}/{len(prompts)} "
            f"prompts vs plain generate on the adapter model in bf16, "
            f"{len(prompts) - p['vs_merged_bf16']['identical_top_beams']}/{len(prompts)} vs plain generate on the "
            f"merged bf16 copy; plain generate bf16 {p['plain_bf16_unmerged_prompts_per_s']:.2f} prompts/s; "
            f"fold {fold_s[0]:.2f} s")
        save()
        del merged_bf16, plain_merged
    else:
        skip("parity_bf16", "budget")

    # 5. throughput of the engine in bf16 (the folded copy made once, hooked to count FLOPs; in fp32
    # the engine folds LoRA in place on every call, and that model is the one hooked)
    with stopwatch(device) as fold_s:
        with decoding_model(model, engine_dtype) as twin:
            merged = twin
    engine_prompts = prompts_all[: args.engine_prompts]
    counter_target = causal_lm_of(merged).model
    shape = Shape.of(merged)
    rate = None  # prompts/s of the last measurement, to estimate the next
    throughput = sections.setdefault("throughput", {})

    def measure(batch: int, label: str) -> dict[str, Any] | None:
        estimate = 2 * len(engine_prompts) / rate if rate else 30.0
        if not budget.allows(estimate + 10):
            skip(label, f"budget: ~{estimate:.0f} s needed, {budget.left():.0f} s left")
            return None
        try:
            generate_beam_ids(merged, tokenizer, engine_prompts[:batch], batch_size=batch, dtype=args.engine_dtype, **warm)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with FlopCounter(counter_target, shape) as counter, stopwatch(device) as t:
                beams = generate_beam_ids(merged, tokenizer, engine_prompts, batch_size=batch, dtype=args.engine_dtype,
                                   **settings)
        except torch.OutOfMemoryError as exc:
            skip(label, f"out of memory ({str(exc).splitlines()[0][:120]})")
            torch.cuda.empty_cache()
            return None
        if not counter.flops:
            log(f"{label}: no FLOPs counted (the counter's hook did not see the decoding model's forwards)")
        n = len(engine_prompts)
        row = {"batch": batch, "prompts": n, "seconds": t[0], "prompts_per_s": n / t[0],
               "prompts_per_s_with_fold": n / (t[0] + fold_s[0]), "tflop": counter.flops / 1e12,
               "tflop_per_s": counter.flops / 1e12 / t[0], "of_measured_peak": counter.flops / 1e12 / t[0] / peak,
               "of_spec": counter.flops / 1e12 / t[0] / args.spec_tflops,
               "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
               **beam_shape(beams, stops)}
        log(f"{label}: {n} prompts in {t[0]:.2f} s = {row['prompts_per_s']:.1f} prompts/s; {row['tflop_per_s']:.2f} "
            f"TFLOP/s = {row['of_measured_peak']:.1%} of the measured matmul peak, {row['of_spec']:.1%} of the bf16 spec"
            + (f"; peak memory {row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else ""))
        return row

    for batch in [int(b) for b in args.engine_batches.split(",") if b.strip()]:
        row = measure(batch, f"engine {args.engine_dtype}, batch {batch}")
        if row:
            throughput[str(batch)] = row
            rate = row["prompts_per_s"]
        save()

    # 6. constrained decoding parity (fp32)
    cprompts = prompts_all[: args.constrained_prompts]
    titles_file = kit / "titles.json"
    if not cprompts or not titles_file.exists():
        skip("constrained", "no prompts or no titles.json in the kit")
    elif not budget.allows(2 * plain_s[0] * len(cprompts) / max(len(prompts), 1) + 30):
        skip("constrained", "budget")
    else:
        titles = json.loads(titles_file.read_text(encoding="utf-8"))
        end = int(tokenizer.eos_token_id)
        trie, dict_trie = TitleTrie.from_titles(tokenizer, titles, end), DictTrie.from_titles(tokenizer, titles, end)
        with stopwatch(device) as base_s:
            baseline = generate_baseline(model, tokenizer, cprompts, trie=dict_trie, batch_size=args.plain_batch, **settings)
        with stopwatch(device) as ours_s:
            constrained = generate_beam_ids(model, tokenizer, cprompts, batch_size=args.parity_batch, dtype="float32",
                                     constrain_to=trie, **settings)
        sections["constrained_fp32"] = {**compare(constrained, baseline), "titles": len(titles),
                                        "baseline_seconds": base_s[0], "engine_seconds": ours_s[0],
                                        **beam_shape(constrained, stops)}
        c = sections["constrained_fp32"]
        log(f"constrained fp32: identical top beams {c['identical_top_beams']}/{len(cprompts)}, all beams "
            f"{c['identical_all_beams']}/{len(cprompts)}; baseline {base_s[0]:.1f} s, engine {ours_s[0]:.1f} s")
        save()

    # 7. the LM head in larger chunks, at the best batch size
    if args.head_chunk and throughput:
        best = max(throughput.values(), key=lambda r: r["prompts_per_s"])
        rate = best["prompts_per_s"]
        defaults = head_module.ChunkedHead.__init__.__defaults__
        head_module.ChunkedHead.__init__.__defaults__ = (args.head_chunk,)  # _decode_batch builds it with the default
        try:
            row = measure(best["batch"], f"engine {args.engine_dtype}, batch {best['batch']}, head chunk {args.head_chunk}")
        finally:
            head_module.ChunkedHead.__init__.__defaults__ = defaults
        if row:
            sections["head_chunk"] = {**row, "chunk": args.head_chunk}
        save()

    # summary
    p32 = sections["parity_fp32"]
    log(f"identical top beams: {p32['identical_top_beams']}/{p32['prompts']}")
    if "parity_bf16" in sections:
        b = sections["parity_bf16"]
        log(f"bf16: {b['vs_merged_bf16']['prompts'] - b['vs_merged_bf16']['identical_top_beams']}/"
            f"{b['vs_merged_bf16']['prompts']} top beams differ from plain generate on the same bf16 weights, "
            f"{b['vs_unmerged_bf16']['prompts'] - b['vs_unmerged_bf16']['identical_top_beams']}/"
            f"{b['vs_unmerged_bf16']['prompts']} from plain generate on the unmerged bf16 adapter model")
    rows = list(throughput.values()) + ([sections["head_chunk"]] if "head_chunk" in sections else [])
    if rows:
        best = max(rows, key=lambda r: r["prompts_per_s_with_fold"])
        speedup = best["prompts_per_s_with_fold"] / sections["plain"]["prompts_per_s"]
        results["speedup"] = {"value": speedup, "engine_batch": best["batch"],
                              "engine_head_chunk": best.get("chunk", head_module.CHUNK),
                              "engine_prompts_per_s_with_fold": best["prompts_per_s_with_fold"],
                              "plain_prompts_per_s": sections["plain"]["prompts_per_s"]}
        save()
        log(f"best: engine {args.engine_dtype} batch {best['batch']}: {best['prompts_per_s_with_fold']:.1f} prompts/s (fold "
            f"included), {best['tflop_per_s']:.2f} TFLOP/s = {best['of_measured_peak']:.1%} of the measured matmul peak; "
            f"plain generate fp32 {sections['plain']['prompts_per_s']:.2f} prompts/s; total {args.budget_s - budget.left():.0f} s")
        log(f"speedup: {speedup:.1f}")
    else:
        save()
        log("speedup: n/a (no throughput measurement fitted the budget)")
    return 0


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["sections"]
    lines = ["# Generation engine on a device: parity and throughput", "", f"`{r['command']}`", "",
             f"{m['date']} on {m['gpu'] or m['device']} ({m['cpus']} CPUs), torch {m['torch']} (CUDA {m['cuda']}), "
             f"transformers {m['transformers']}, Python {m['python']}; softrec at {m['commit'] or '?'}.", "",
             f"Model: {r['model']['architecture']}, {r['model']['layers']} layers, "
             f"{r['model']['parameters'] / 1e6:.0f}M parameters; {r['model']['adapter']}.", ""]
    if "roofline" in s:
        roof = s["roofline"]
        lines += [f"Roofline: {roof['matmul']['dtype']} matmul {roof['matmul']['tflop_per_s']:.2f} TFLOP/s measured "
                  f"({roof['matmul']['size']}^3); bf16 spec {roof['spec_tflop_per_s']:.0f}.", ""]
    if "plain" in s:
        p = s["plain"]
        lines += [f"Plain `generate` (fp32, adapter unmerged, batch {p['batch']}): {p['prompts']} prompts in "
                  f"{p['seconds']:.1f} s = {p['prompts_per_s']:.2f} prompts/s; {p['distinct_top_beams']} distinct top beams, "
                  f"mean {p['mean_top_beam_tokens']:.1f} tokens, {p['top_beams_ending_with_stop']} ending with a stop token.", ""]
    lines += ["| check | prompts | identical top beams | identical all beams |", "|---|---|---|---|"]
    checks = {"fp32 engine vs plain generate": s.get("parity_fp32"),
              "bf16 engine vs plain generate, merged bf16 weights": s.get("parity_bf16", {}).get("vs_merged_bf16"),
              "bf16 engine vs plain generate, adapter model in bf16": s.get("parity_bf16", {}).get("vs_unmerged_bf16"),
              "fp32 constrained engine vs generate + prefix_allowed_tokens_fn": s.get("constrained_fp32")}
    for name, c in checks.items():
        if c:
            lines.append(f"| {name} | {c['prompts']} | {c['identical_top_beams']} | {c['identical_all_beams']} |")
    rows = [(f"{b}", row) for b, row in s.get("throughput", {}).items()]
    if "head_chunk" in s:
        rows.append((f"{s['head_chunk']['batch']} (head chunk {s['head_chunk']['chunk']})", s["head_chunk"]))
    if rows:
        lines += ["", f"| engine {r['settings']['engine_dtype']} batch | prompts | s | prompts/s | prompts/s incl. fold | TFLOP/s | of measured peak | "
                  "of spec | peak GiB | mean top-beam tokens |", "|---|---|---|---|---|---|---|---|---|---|"]
        for label, row in rows:
            memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
            lines.append(f"| {label} | {row['prompts']} | {row['seconds']:.2f} | {row['prompts_per_s']:.1f} | "
                         f"{row['prompts_per_s_with_fold']:.1f} | {row['tflop_per_s']:.2f} | {row['of_measured_peak']:.1%} | "
                         f"{row['of_spec']:.1%} | {memory} | {row['mean_top_beam_tokens']:.1f} |")
    if "speedup" in r:
        sp = r["speedup"]
        lines += ["", f"**Speedup: {sp['value']:.1f}x** (engine {r['settings']['engine_dtype']}, batch {sp['engine_batch']}, "
                  f"{sp['engine_prompts_per_s_with_fold']:.1f} prompts/s, over plain generate fp32, "
                  f"{sp['plain_prompts_per_s']:.2f} prompts/s)."]
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(r["skipped"])]
    lines += ["", f"Settings: `{json.dumps(r['settings'])}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
