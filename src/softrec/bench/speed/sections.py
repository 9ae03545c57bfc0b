"""The sections of `softrec bench speed`: each measures one thing and returns its results.json entry."""

from __future__ import annotations

import contextlib
import shutil
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softrec.bench.speed.decoding import compare_decoding
from softrec.bench.speed.flops import FLOP_FORMULA, matmul_peak
from softrec.bench.speed.training import TrainingComparison, compare_training, step_summary
from softrec.bench.timing import ratio, series, stopwatch, timing_calls

Log = Callable[[str], None]


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
    # only the dtypes the compared steps ran in: a bf16 matmul on a CPU without bf16 hardware is
    # emulated (~0.3 GFLOP/s on a Zen 3), and timing it cost minutes for a number nothing used
    used = sorted({"bfloat16" if bf16 else "float32" for bf16 in bench.train.bf16.values()} | {"float32"})
    for dtype in (getattr(torch, name) for name in used):
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

