"""Generation engine vs plain `model.generate`: evaluation and self-distillation, side by side.

    .venv/bin/python benchmarks/bench_generation.py [--data PREPARED | --dataset amazon-books]
        [--run RUN] [--prompts 16] [--model gemma-3-270m] [--out DIR]

The same prompts (the first N test windows for evaluation, the first N train windows for
distillation) and the same model + adapter (RUN's, or a seeded LoRA r=8 on q/v with non-zero B so
that folding it in matters) are decoded by plain `generate` (fp32, adapter unmerged, 4 beams, up to
64 new tokens, batches of 8) and by softrec's engine. Prints the machine's roofline (matmul peak,
memory bandwidth), per stage prompts/s of both, their ratio, the engine's share of the matmul peak,
`identical top beams: K/N` and, as its last line, `speedup: X` (evaluation prompts/s, engine over
plain). Writes results.json / results.md to --out. The measuring code is `softrec.bench.generation`,
which `softrec bench speed` runs too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def prepared(args: argparse.Namespace):
    from softrec.data.dataset import PreparedDataset

    if args.data:
        return PreparedDataset.load(args.data)
    from softrec.config import DataConfig
    from softrec.data.protocol import prepare_dataset

    size = max(args.prompts, 64)
    config = DataConfig(dataset=str(args.dataset), train_size=size, valid_size=16, test_size=size)
    return prepare_dataset(config, Path(args.work) / f"prepared-{Path(args.dataset).name}-{size}")


def load_model(args: argparse.Namespace):
    from softrec.models.registry import load_backbone, load_run_model

    if args.run:
        return load_run_model(args.run)
    if args.adapter:  # a peft adapter folder, e.g. a training checkpoint of a run still in progress
        from peft import PeftModel

        model, tokenizer = load_backbone(args.model)
        return PeftModel.from_pretrained(model, args.adapter).eval(), tokenizer
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_backbone(args.model)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter is not a no-op: give B the scale training reaches
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    return model.eval(), tokenizer


def split_prompts(dataset, tokenizer, split: str, n: int) -> list[str]:
    """The first n windows of `split` as prompts, built the way every stage builds them."""
    from softrec.data.prompts import sample_prompt

    return [sample_prompt(dataset, s, "alpaca", tokenizer) for s in dataset.split(split)[:n]]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and model options that `prepared` and `load_model` read (bench_engine_dtype.py too)."""
    parser.add_argument("--data", help="a prepared dataset directory")
    parser.add_argument("--dataset", default=str(SHARED / "amazon-books"), help="a source to prepare")
    parser.add_argument("--run", help="a trained run directory (its adapter); default: a seeded LoRA")
    parser.add_argument("--adapter", help="a peft adapter folder on --model (e.g. RUN/checkpoints/checkpoint-N)")
    parser.add_argument("--model", default="gemma-3-270m")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per stage")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--engine-batch", type=int, default=None, help="default: the engine's own")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--work", default="/tmp/softrec-bench-generation")
    parser.add_argument("--out", default=None, help="where results.json / results.md go")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(args.work).mkdir(parents=True, exist_ok=True)

    from softrec.bench import machine
    from softrec.bench.generation import compare_stage, memory_bandwidth
    from softrec.bench.speed.flops import matmul_peak
    from softrec.data.prompts import strip_response
    from softrec.inference import grounding
    from softrec.inference.generate import decode_dtype

    def log(message: str) -> None:
        print(message, flush=True)

    dataset = prepared(args)
    model, tokenizer = load_model(args)
    engine_dtype = decode_dtype(args.dtype, model.device)
    info = {**machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"), "threads": torch.get_num_threads()}
    log(f"machine: {info.get('cpu_model')}, {info['threads']} threads; engine dtype {engine_dtype}")
    peak = matmul_peak(engine_dtype)
    bandwidth = memory_bandwidth()
    log(f"roofline: matmul {peak['median']:.1f} GFLOP/s ({peak['dtype']}), memory {bandwidth['median']:.1f} GB/s")

    def prompts_of(split: str) -> list[str]:
        return split_prompts(dataset, tokenizer, split, args.prompts)

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.inference_mode(), (model.disable_adapter() if hasattr(model, "disable_adapter") else torch.no_grad()):
        catalogue = grounding.catalogue_embeddings(base, tokenizer, dataset, cache_key=args.model)

    def ground(texts: list[str]) -> None:  # as evaluation does: frozen-base embeddings, L2 ranking
        with model.disable_adapter() if hasattr(model, "disable_adapter") else torch.no_grad():
            queries = grounding.embed_texts(model, tokenizer, [strip_response(t) or " " for t in texts])
        grounding.rank_by_distance(queries, catalogue)

    settings = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens,
                "engine_batch": args.engine_batch, "dtype": args.dtype, "log": log}
    stages = {}
    log("evaluation (L2 grounding) ...")
    stages["evaluation"] = compare_stage(model, tokenizer, prompts_of("test"), after=ground, **settings)
    log("self-distillation ...")
    stages["distillation"] = compare_stage(model, tokenizer, prompts_of("train"), **settings)

    results = {
        "machine": info,
        "command": "python benchmarks/bench_generation.py " + shlex.join(sys.argv[1:]),
        "settings": {"model": args.model, "adapter": args.run or args.adapter or "seeded LoRA r=8 q/v, B ~ N(0, 0.01)",
                     "dataset": dataset.name, "beams": args.beams, "max_new_tokens": args.max_new_tokens,
                     "plain_batch": 8, "engine_batch": args.engine_batch or "engine default"},
        "roofline": {"matmul_gflop_per_s": peak, "memory_gb_per_s": bandwidth},
        "stages": stages,
    }
    for name, stage in stages.items():
        stage["fraction_of_matmul_peak"] = stage["engine_gflop_per_s"] / peak["median"]
        log(f"{name}: plain {stage['plain_prompts_per_s']:.3f} prompts/s, engine "
            f"{stage['engine_prompts_per_s']:.3f} prompts/s, ratio {stage['ratio']:.2f}; engine "
            f"{stage['engine_gflop_per_s']:.1f} GFLOP/s = {stage['fraction_of_matmul_peak']:.0%} of the matmul peak; "
            f"identical top beams {stage['identical_top_beams']}/{stage['prompts']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "results.md").write_text(render(results), encoding="utf-8")
    same = sum(s["identical_top_beams"] for s in stages.values())
    total = sum(s["prompts"] for s in stages.values())
    log(f"identical top beams: {same}/{total}")
    log(f"speedup: {stages['evaluation']['ratio']:.2f}")
    return 0


def render(r: dict) -> str:
    m, roof = r["machine"], r["roofline"]
    lines = [
        "# Generation: engine vs plain `model.generate`", "",
        f"`{r['command']}`", "",
        f"{m.get('date')} on {m.get('cpu_model')} ({m.get('threads')} threads), commit {m.get('git_commit') or '?'}.", "",
        f"Roofline: matmul {roof['matmul_gflop_per_s']['median']:.1f} GFLOP/s "
        f"({roof['matmul_gflop_per_s']['dtype']}), memory {roof['memory_gb_per_s']['median']:.1f} GB/s.", "",
        "| stage | prompts | plain prompts/s | engine prompts/s | ratio | identical top beams | engine GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['prompts']} | {s['plain_prompts_per_s']:.3f} | {s['engine_prompts_per_s']:.3f} | "
                     f"{s['ratio']:.2f}x | {s['identical_top_beams']}/{s['prompts']} | {s['engine_gflop_per_s']:.1f} | "
                     f"{s['fraction_of_matmul_peak']:.0%} |")
    lines += ["", f"Settings: {json.dumps(r['settings'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
