"""results.md (the table, gains, validation curves, commands), results.png and the saved predictions."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from softrec.bench.quality.planning import eval_folder
from softrec.bench.quality.study import relative_bounds, study_lines
from softrec.bench.quality.suites import (
    GAIN_METRICS,
    LABELS,
    PAPER_MEAN_GAIN_PERCENT,
    SOFT_PAIRS,
    TABLE_METRICS,
    WITH_INTERVAL,
    alpha_of,
    label,
)
from softrec.methods import is_classic


def own_runs(dataset: dict[str, Any]) -> dict[str, Any]:
    """The rows with a run of their own: a study row that is a sweep row's run (`same_run_as`) appears
    only in the study section."""
    return {m: r for m, r in dataset["methods"].items() if "same_run_as" not in r}


def llm_curves(dataset: dict[str, Any]) -> dict[str, Any]:
    """The LLM runs whose validation curve the report shows (each once: not the chosen SOFT row's copy).
    SASRec/GRU4Rec histories (tens of epochs, no validity) stay in results.json."""
    return {m: r for m, r in own_runs(dataset).items() if r.get("history") and m != "soft" and not is_classic(m)}

def _cell(metric: dict[str, float] | None, interval: bool) -> str:
    if not metric:
        return "-"
    return f"{metric['value']:.4f}" + (f" [{metric['low']:.4f}, {metric['high']:.4f}]" if interval else "")


def _diff_cell(diff: dict[str, float] | None) -> str:
    if not diff:
        return "-"
    return f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] p={diff['p']:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    from softrec.bench import describe

    suite, results = payload["suite"], payload["results"]
    lines = [
        f"# softrec quality benchmark: suite `{suite['name']}`", "",
        f"Scale: {payload['scale']}.", "",
        *_finding_lines(results, payload.get("average_gains")),
        f"Table built {payload['finished']} on {describe(payload['machine'])}.", "",
        "Steps ran on: " + "; ".join(sorted({m for r in results.values() for row in r["methods"].values()
                                             for m in row.get("ran_on", [])})) + " (per row: results.json `ran_on`).", "",
        f"Full ranking over each catalogue; LLM rows generate with {payload['num_beams']}-beam search and are "
        "grounded by L2 distance (BIGRec). HR@10 and NDCG@10 cells: value [95% bootstrap interval] (all "
        "intervals are in results.json); 'vs SFT': paired bootstrap difference against BIGRec-SFT (for "
        "LLaRA-SOFT: against LLaRA-SFT) on the same samples [95% interval] and its two-sided p.",
        "",
    ]
    if suite["test_limit"] and suite["test_limit"] < 1000:
        lines += [f"**At {suite['test_limit']} test samples per dataset these intervals are wide: the table shows "
                  "that every method runs and the magnitudes; it cannot confirm or refute SOFT's claimed gain "
                  "(about 1000-2000 samples are needed at HR@10 near 0.05). Use `--suite gpu` for that.**", ""]
    for name, dataset in results.items():
        lines += [f"## {name} ({dataset['n']} test samples)", "",
                  "| method | " + " | ".join(TABLE_METRICS) + " | validity | HR@10 vs SFT | NDCG@10 vs SFT | seconds |",
                  "|---|" + "---|" * (len(TABLE_METRICS) + 4)]
        for row in own_runs(dataset).values():
            cells = [_cell(row["metrics"].get(m), m in WITH_INTERVAL) for m in TABLE_METRICS]
            validity = row["summary"].get("validity")
            vs = row.get("vs_sft", {})
            lines.append(f"| {row['label']} | " + " | ".join(cells) +
                         f" | {validity if validity is None else f'{validity:.3f}'} | {_diff_cell(vs.get('HR@10'))} | "
                         f"{_diff_cell(vs.get('NDCG@10'))} | {row['seconds']:.0f}{'*' if row.get('seconds_partial') else ''} |")
        lines += ["", *_copied_lines(dataset), *_sensitivity_lines(dataset), *_distilled_lines(dataset)]
    lines += _gain_lines(results, payload["average_gains"])
    lines += study_lines(results)
    lines += _history_lines(results, suite.get("valid_size"))
    out = payload["out"]
    lines += ["## Commands", "", "```sh", f"# {payload['command']}", f"OUT={shlex.quote(out)}"]
    lines += [s["command"].replace(out, "$OUT") for s in payload["steps"]]
    lines += ["```", "", "seconds: wall time of the row's own steps (training, distillation for SOFT rows, "
              "evaluation), as recorded when they ran; * a resumed training, timed only from where it resumed. "
              "A run forked from a sibling's epoch 1 (`--fork-from` above) is timed from its epoch 2 on, and an "
              "evaluation copied from a sibling (`--reuse-from`) takes seconds.", ""]
    return "\n".join(lines)


def _copied_lines(dataset: dict[str, Any]) -> list[str]:
    """Rows whose test evaluation is a sibling's (`softrec evaluate --reuse-from`): the same tensors."""
    lines = []
    for row in own_runs(dataset).values():
        if source := row["summary"].get("copied_from"):
            lines.append(f"{row['label']} kept the epoch it shares with `{Path(source).name}` (the same "
                         "weights, byte for byte): its test evaluation is that run's, copied.")
    return [*lines, ""] if lines else []


def _relative_interval(facts: dict[str, float], base: float) -> str:
    low, high = relative_bounds(facts, base)
    return f"{low:+.0f}% to {high:+.0f}%"


def _verdict(vs: dict[str, dict[str, float]]) -> str:
    """Significant at 95% on the table's two metrics (paired bootstrap intervals), in words."""
    signs = {metric: ("higher" if vs[metric]["low"] > 0 else "lower" if vs[metric]["high"] < 0 else None)
             for metric in WITH_INTERVAL}
    found = [f"{word} on {metric}" for metric, word in signs.items() if word]
    return "significantly " + " and ".join(found) if found else "no significant difference on " + " or ".join(signs)


def _one_model(dataset: dict[str, Any], soft_row: dict[str, Any]) -> str:
    """When every other SOFT run on SFT's targets kept the epoch it shares with the chosen one (its
    evaluation copied), the sweep compared one model: said, since the table shows identical rows."""
    chosen = soft_row.get("chosen")
    first = dataset["methods"].get(chosen or "", {}).get("run_dir")
    others = [r for m, r in own_runs(dataset).items()
              if (alpha_of(m) is not None or m == "soft-sd-only") and m != chosen]
    if not first or not others or any(r["summary"].get("copied_from") != first for r in others):
        return ""
    return (f" Every other SOFT run ({', '.join(r['label'] for r in others)}) kept the epoch it shares with it: "
            "one model, SOFT's first epoch (lambda = 1, the distilled targets only).")


def _finding_lines(results: dict[str, Any], averages: dict[str, Any] | None = None) -> list[str]:
    """The answer in words, per dataset: the headline SOFT row against SFT (paired 95% intervals, also
    relative to SFT, beside the paper's average gain); over all datasets, the paper's own measure with
    its interval (`_overall_line`); and what it is conditional on."""
    lines = []
    for name, dataset in results.items():
        row, sft = dataset["methods"].get("soft"), dataset["methods"].get("sft")
        vs = (row or {}).get("vs_sft", {})
        if not all(metric in vs for metric in WITH_INTERVAL):
            continue
        parts = []
        for metric in WITH_INTERVAL:
            base, value = sft["metrics"][metric]["value"], row["metrics"][metric]["value"]
            relative = f", {_relative_interval(vs[metric], base)} relative" if base > 0 else ""
            parts.append(f"{metric} {base:.4f} -> {value:.4f} ({vs[metric]['diff']:+.4f} "
                         f"[{vs[metric]['low']:+.4f}, {vs[metric]['high']:+.4f}]{relative})")
        outside = [m for m in WITH_INTERVAL if sft["metrics"][m]["value"] > 0
                   and relative_bounds(vs[m], sft["metrics"][m]["value"])[1] < PAPER_MEAN_GAIN_PERCENT]
        paper = (f" The paper's +{PAPER_MEAN_GAIN_PERCENT}% lies above the interval on {' and '.join(outside)}."
                 if outside else "")
        pending = (" Provisional: alpha " + ", ".join(f"{alpha_of(m):g}" for m in row["pending"]) + " not finished."
                   if row.get("pending") else "")
        soft = f"{LABELS['soft']} alpha={alpha_of(row['chosen']):g}" if row.get("chosen") else row["label"]
        lines.append(f"- **{name}** ({dataset['n']} test samples): {soft} vs {sft['label']}: "
                     f"{_verdict(vs)}. " + "; ".join(parts) + "." + paper + pending + _one_model(dataset, row))
    if not lines:
        return []
    lines += _overall_line(results, (averages or {}).get("soft/sft"))
    return ["## Finding", "", *lines, "",
            "Conditional on this scale (above), one seed, the teacher's quality (BIGRec-SFT's row) and the alpha "
            "chosen on validation; intervals are paired bootstrap 95% over the test samples.", ""]


def _overall_line(results: dict[str, Any], average: dict[str, Any] | None) -> list[str]:
    """The paper's headline measure (relative gain averaged over datasets and metrics) for the headline
    SOFT row, with its stratified bootstrap interval, read against the paper's +37.59%."""
    if not average or "low_percent" not in average:
        return []
    low, high = average["low_percent"], average["high_percent"]
    where = ("above" if PAPER_MEAN_GAIN_PERCENT > high else "below" if PAPER_MEAN_GAIN_PERCENT < low else "inside")
    sign = "above 0" if low > 0 else "below 0" if high < 0 else "includes 0"
    counted = sum(1 for d in results.values() if "soft/sft" in d.get("gains", {}))
    return [f"- **Over {counted} dataset(s)**, the paper's measure (the relative gain averaged over datasets and "
            f"the {len(GAIN_METRICS)} HR/NDCG@K): **{average['mean_percent']:+.1f}%** [{low:+.1f}%, {high:+.1f}%] "
            f"({average['terms']} terms; 95% stratified paired bootstrap over the test samples, SFT's values resampled too); "
            f"the interval {sign}, and the paper's +{PAPER_MEAN_GAIN_PERCENT}% lies {where} it."]


def _sensitivity_lines(dataset: dict[str, Any]) -> list[str]:
    """What this table can detect: the headline SOFT row's paired test against SFT, at this sample size
    and base rate (`softrec.metrics.paired_sensitivity`)."""
    row, sft = dataset["methods"].get("soft"), dataset["methods"].get("sft")
    vs = (row or {}).get("vs_sft", {})
    parts = []
    for metric in WITH_INTERVAL:
        facts = vs.get(metric, {})
        if facts.get("detectable_percent") is None:
            continue
        parts.append(f"{metric} (SFT {sft['metrics'][metric]['value']:.4f}): +{facts['detectable_percent']:.0f}% "
                     f"is detected 80% of the time, the paper's +{PAPER_MEAN_GAIN_PERCENT}% "
                     f"{100 * facts['chance_at_paper_gain']:.0f}% of the time")
    if not parts:
        return []
    return [f"What {dataset['n']} samples can detect ({row['label']} vs {sft['label']}; a paired test at 95%, "
            "normal approximation from the observed per-sample differences): " + "; ".join(parts) + ".", ""]


def _distilled_lines(dataset: dict[str, Any]) -> list[str]:
    """How good the SOFT rows' targets are: SFT's kept epoch on the training prompts it distils."""
    facts = dataset.get("distilled") or {}
    if facts.get("exact_title_share") is None:
        return []
    return [f"SOFT's distilled targets (SFT's kept epoch, raw text, on its training prompts): "
            f"{facts['exact_title_share']:.1%} are exact catalogue titles, {facts['target_hit_share']:.1%} "
            "the true next item.", ""]


def _gain_lines(results: dict[str, Any], averages: dict[str, Any]) -> list[str]:
    found = {pair for d in results.values() for pair in d["gains"]}
    pairs = [(soft, sft) for soft, sft in SOFT_PAIRS.items() if f"{soft}/{sft}" in found]  # headline first
    if not pairs:
        return []
    lines = ["## Relative gain of SOFT over SFT (%)", "",
             f"(value - SFT) / SFT x 100 per dataset and metric; the paper reports +{PAPER_MEAN_GAIN_PERCENT}% on average. "
             "'n/a' where SFT scored 0.", ""]
    for soft, sft in pairs:
        pair = f"{soft}/{sft}"
        lines += [f"### {LABELS[soft]} vs {LABELS[sft]}", "", "| dataset | " + " | ".join(GAIN_METRICS) + " |",
                  "|---|" + "---:|" * len(GAIN_METRICS)]
        for name, dataset in results.items():
            gains = dataset["gains"].get(pair)
            if gains:
                cells = ["n/a" if gains[m] is None else f"{gains[m]:+.1f}" for m in GAIN_METRICS]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if pair in averages:
            a = averages[pair]
            lines += ["", f"Average over datasets and metrics: **{a['mean_percent']:+.1f}%**{_average_interval(a)} "
                      f"({a['terms']} terms, {a['undefined']} undefined)."]
        lines.append("")
    return lines


def _average_interval(average: dict[str, Any]) -> str:
    """An average gain's 95% interval (stratified paired bootstrap), where known."""
    if "low_percent" not in average:
        return ""
    return f" [{average['low_percent']:+.1f}%, {average['high_percent']:+.1f}%]"


def _history_lines(results: dict[str, Any], valid_samples: int | None = None) -> list[str]:
    """Every LLM run's validation curve (the teacher's included) and, for SOFT, lambda and d_k per epoch;
    then how the alpha sweep's run was chosen (`_selection_line`)."""
    lines = []
    for name, dataset in results.items():
        runs = llm_curves(dataset)
        if not runs:
            continue
        lines += [f"## Validation curves: {name}", "",
                  "Per epoch: validation HR@10 / validity, and for SOFT runs lambda and d_k; * marks the kept epoch.", "",
                  "| run | " + " | ".join(f"epoch {i}" for i in range(1, 1 + max(len(r["history"]) for r in runs.values()))) + " |",
                  "|---|" + "---|" * max(len(r["history"]) for r in runs.values())]
        for row in runs.values():
            cells = []
            # "best" is recorded per epoch as best-so-far; the kept epoch is the last one marked
            kept = max((e["epoch"] for e in row["history"] if e.get("best")), default=None)
            distilled = any(e.get("lambda") or e.get("distance") is not None for e in row["history"])  # SFT: lambda 0
            for e in row["history"]:
                cell = f"{e.get('HR@10', float('nan')):.4f} / {e.get('validity', float('nan')):.2f}"
                if distilled and "lambda" in e:
                    cell += f", λ {e['lambda']:.2f}" + (f", d {e['distance']:.1f}" if e.get("distance") is not None else "")
                cells.append(cell + (" *" if e.get("epoch") == kept else ""))
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        if "soft" in dataset["methods"] and "chosen" in dataset["methods"]["soft"]:
            lines += ["", _selection_line(dataset["methods"]["soft"], valid_samples)]
        lines.append("")
    return lines


def _selection_line(soft: dict[str, Any], valid_samples: int | None) -> str:
    """The sweep's choice and its margin: each run's best validation HR@10 as hits in the top 10 of the
    validation samples, so that a choice made on one or two hits reads as the coin flip it is."""
    line = f"SOFT row: {soft['chosen']} (best validation HR@10, then NDCG@10, validity)."
    scores = {m: key[0] for m, key in soft.get("chosen_from", {}).items() if key[0] != float("-inf")}
    if not valid_samples or len(scores) < 2 or soft["chosen"] not in scores:
        return line
    hits = {m: round(score * valid_samples) for m, score in scores.items()}
    margin = hits[soft["chosen"]] - max(h for m, h in hits.items() if m != soft["chosen"])
    return (f"{line} Top-10 hits on the {valid_samples} validation samples: "
            f"{', '.join(f'{m} {h}' for m, h in hits.items())}; a margin of {margin} hit(s)"
            + (" (a tie on HR@10: decided by NDCG@10, validity, then the sweep's order)." if margin == 0 else "."))


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of HR@10 and NDCG@10 per dataset and method, with their bootstrap intervals."""
    from softrec.bench import pyplot, write_png

    if not results:
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5), squeeze=False)
    methods = list(dict.fromkeys(m for d in results.values() for m in own_runs(d)))
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes[0], ("HR@10", "NDCG@10"), strict=True):
        for i, method in enumerate(methods):
            xs, ys, errs = [], [], [[], []]
            for x, dataset in enumerate(results.values()):
                row = dataset["methods"].get(method)
                if row:
                    m = row["metrics"][metric]
                    xs.append(x + (i - (len(methods) - 1) / 2) * width)
                    ys.append(m["value"])
                    errs[0].append(m["value"] - m["low"])
                    errs[1].append(m["high"] - m["value"])
            ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label(method))
        ax.set_xticks(range(len(results)), [f"{n}\n(n={d['n']})" for n, d in results.items()])
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{metric} with 95% bootstrap intervals")
    axes[0][1].legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return write_png(fig, path)


def curves_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Validation HR@10 per epoch of every LLM run (the teacher's included), a panel per dataset, the
    kept epoch starred; nothing written without a run that has a history."""
    from softrec.bench import pyplot, write_png

    panels = {name: llm_curves(d)
              for name, d in results.items()}
    panels = {name: runs for name, runs in panels.items() if runs}
    if not panels:
        return None
    fig, axes = pyplot().subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels.items(), strict=True):
        for i, row in enumerate(runs.values()):
            epochs = [e["epoch"] for e in row["history"]]
            ax.plot(epochs, [e.get("HR@10") for e in row["history"]], marker="o", color=f"C{i}", label=row["label"])
            kept = [e for e in row["history"] if e.get("best")][-1:]  # best-so-far per epoch: the last is kept
            ax.scatter([e["epoch"] for e in kept], [e.get("HR@10") for e in kept], marker="*", s=180, color=f"C{i}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation HR@10")
        ax.set_title(f"{name}: validation curves (* kept epoch)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return write_png(fig, path)


PREDICTIONS_FORMAT = """# Per-sample predictions: recompute the table without softrec

`DATASET-ROW.jsonl.gz`: one JSON object per test sample, the same samples in every file of a dataset:
`sample_id`; `target` (the next item's id); `ranked` (the top 50 item ids, best first); `target_rank`
(0-based position of the target in the full ranking over the catalogue, null if absent); LLM rows also
`generated` (the top beam's text), `valid` (it is a catalogue title) and `decode_steps`.
`machines.json`: the machine(s) each file's steps ran on.

HR@K = share of samples with target_rank < K; NDCG@K = mean of 1 / log2(target_rank + 2) over those
samples, 0 elsewhere. With the standard library only:

```python
import gzip, json, math, random

def ranks(path):
    return {r["sample_id"]: r["target_rank"] for r in map(json.loads, gzip.open(path, "rt"))}

def hr(rank, k=10):
    return float(rank is not None and rank < k)

def ndcg(rank, k=10):
    return 1 / math.log2(rank + 2) if rank is not None and rank < k else 0.0

def metric(path, fn=hr, k=10):
    values = [fn(r, k) for r in ranks(path).values()]
    return sum(values) / len(values)

def paired_interval(path_a, path_b, fn=hr, k=10, resamples=10_000, seed=0):
    # 95% paired bootstrap interval of mean(b - a) over the shared samples (the table's "vs SFT")
    a, b = ranks(path_a), ranks(path_b)
    diffs = [fn(b[s], k) - fn(a[s], k) for s in sorted(a)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(resamples))
    return sum(diffs) / len(diffs), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
```

(softrec's own bootstrap draws with numpy, so its interval ends differ from this one's in the last digit.)
"""


def save_predictions(out: Path, save: Path, results: dict[str, Any], limit: int | None) -> None:
    """Every row's per-sample predictions, gzipped, so the table can be recomputed without softrec
    (predictions/FORMAT.md says how), and predictions/machines.json: each file's machine(s), as its
    steps recorded them."""
    import gzip

    from softrec.runs import atomic_write_json, atomic_write_text

    folder = save / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    machines = {}
    for name, dataset in results.items():
        for method, row in dataset["methods"].items():
            source = eval_folder(out, name, row.get("chosen", method), limit) / "predictions.jsonl"
            if source.exists():
                # mtime 0: the same predictions give the same bytes, so a rebuilt table diffs clean
                with gzip.GzipFile(folder / f"{name}-{method}.jsonl.gz", "wb", mtime=0) as fh:
                    fh.write(source.read_bytes())
                machines[f"{name}-{method}.jsonl.gz"] = row.get("ran_on")
    atomic_write_json(folder / "machines.json", machines)
    atomic_write_text(folder / "FORMAT.md", PREDICTIONS_FORMAT)

