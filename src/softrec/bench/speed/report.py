"""results.md of `softrec bench speed`: one row per measured quantity, and the atomic results files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softrec.bench.speed.flops import FLOP_FORMULA
from softrec.bench.timing import ratio


def format_number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 0.01 else f"{value:.2g}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measurement, softrec, baseline, ratio, notes) per measured quantity."""
    rows = []
    if t := r.get("train"):
        rows.append((
            "training tokens/s (SFT step)", format_number(t["softrec"]["tokens_per_s"]["median"]),
            format_number(t["plain"]["tokens_per_s"]["median"]) + " (plain HF Trainer)", format_ratio(t["ratio"]),
            f"median over {t['softrec']['steps']} steps of {t['micro_batch']} samples "
            f"({t['mean_tokens_per_sample']} tokens each); bf16 autocast: softrec {t['bf16_autocast']['softrec']}, "
            f"plain {t['bf16_autocast']['plain']}"))
        rows.append((
            "SOFT step vs SFT step (s)", format_number(t["soft"]["step_seconds"]["median"]),
            format_number(t["softrec"]["step_seconds"]["median"]) + " (SFT step)", format_ratio(t["soft_step_ratio"]),
            "lambda 0.5: real and distilled targets in one packed forward (reference: two passes, >= 2x)"))
    if s := r.get("soft_epoch"):
        rows.append((
            "SOFT epoch vs SFT epoch (s)", format_number(s["soft"]["epoch_seconds"]["median"]),
            format_number(s["sft"]["epoch_seconds"]["median"]) + " (SFT epoch)", format_ratio(s["ratio"]),
            f"{s['samples']} samples, median over {s['epochs']} epochs; lambdas "
            f"{[round(x, 3) if x is not None else None for x in s['soft']['lambdas']]}; probe of {s['probe_size']} "
            f"prompts: {', '.join(format_number(x) for x in s['soft']['probe_seconds'])} s (the first, d_0, once per run)"))
        d = s["distillation"]
        rows.append((
            "self-distillation prompts/s", format_number(d["prompts_per_s"]), "-", "-",
            f"{s['samples']} samples in {format_number(d['seconds'])} s ({d['beams']} beams, <= {d['max_new_tokens']} "
            f"new tokens); whole SOFT stage (distil + train) / SFT run: {format_ratio(s['pipeline_ratio'])}"))
    if d := r.get("decoding"):
        rows.append((
            "constrained decoding prompts/s", format_number(d["softrec"]["prompts_per_s"]["median"]),
            format_number(d["baseline"]["prompts_per_s"]["median"]) + " (prefix_allowed_tokens_fn + dict trie)",
            format_ratio(d["ratio"]),
            f"identical rankings {d['identical_rankings']}/{d['prompts']}; {d['beams']} beams, batch "
            f"{d['batch_size']}, {d['catalogue_titles']} titles"))
    if e := r.get("evaluation"):
        rows.append((
            "evaluation prompts/s", format_number(e["softrec"]["prompts_per_s"]["median"]),
            format_number(e["decoding_only"]["prompts_per_s"]["median"]) + " (its decoding alone)", format_ratio(e["ratio"]),
            f"{e['prompts']} prompts, {e['grounding']} grounding, {e['beams']} beams, {e['model']}; catalogue "
            f"embeddings {format_number(e['catalogue_embedding_seconds'])} s (once per model and catalogue, cached)"))
    if g := r.get("generation"):
        for stage in ("evaluation", "distillation"):
            x = g[stage]
            rows.append((
                f"{stage} prompts/s, engine vs plain generate", format_number(x["engine_prompts_per_s"]),
                format_number(x["plain_prompts_per_s"]) + " (model.generate, fp32, adapter unmerged, batch 8)", format_ratio(x["ratio"]),
                f"identical top beams {x['identical_top_beams']}/{x['prompts']}; 4 beams, <= 64 new tokens; engine "
                f"{x['engine_dtype']}, {format_number(x['engine_gflop_per_s'])} GFLOP/s executed"))
    if m := r.get("mfu"):
        peaks = m["peak_gflops"]
        rows.append((
            "MFU of a training step", f"{m['softrec']['mfu']['median']:.2%}",
            f"{m['plain']['mfu']['median']:.2%} (plain HF Trainer)", format_ratio(m["ratio"]),
            f"vs peak {m['softrec']['peak_dtype']} (softrec) / {m['plain']['peak_dtype']} (plain); achieved "
            f"{format_number(m['softrec']['achieved_gflops']['median'])} / {format_number(m['plain']['achieved_gflops']['median'])} GFLOP/s"))
        bf16 = peaks.get("bfloat16")  # timed only where a compared step ran in bf16
        rows.append((
            "matmul peak GFLOP/s", f"{format_number(bf16['median'])} bf16" if bf16 else "- (no bf16 step)",
            f"{format_number(peaks['float32']['median'])} fp32",
            format_ratio(ratio(bf16["median"], peaks["float32"]["median"])) if bf16 else "-",
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

