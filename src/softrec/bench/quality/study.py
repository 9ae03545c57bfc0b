"""The "when does SOFT help?" study (#15): the soft-t{E}-{rule} rows' teachers, their section of
results.md and study.png (gain over SFT against the teacher's validation HR@10 and target titles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softrec.bench.quality.planning import data_folder
from softrec.bench.quality.suites import STUDY_RULES, teacher_dir, teacher_of

DISTILLED = "distilled.jsonl"


def distillation_facts(teacher: Path, prepared: Path) -> dict[str, float | None]:
    """How good a teacher run's distilled targets are on its training prompts: the shares of exact
    titles and of true next items (`inference.distill.distilled_shares`), from its manifest, or
    computed from TEACHER/distilled.jsonl where an older softrec did not record them; None without one."""
    manifest = teacher / "manifest.json"
    entry = json.loads(manifest.read_text()).get("artefacts", {}).get(DISTILLED, {}) if manifest.exists() else {}
    shares = {k: entry.get(k) for k in ("exact_title_share", "target_hit_share")}
    if None in shares.values() and (teacher / DISTILLED).exists() and (prepared / "dataset.json").exists():
        from softrec.config import load_config
        from softrec.data.dataset import PreparedDataset
        from softrec.inference.distill import distilled_shares
        from softrec.runs import read_jsonl

        config = teacher / "config.yaml"
        rule = (load_config(config) if config.exists() else load_config()).eval.response_rule
        shares = distilled_shares(list(read_jsonl(teacher / DISTILLED)), PreparedDataset.load(prepared), rule)
    return shares


def teacher_facts(root: Path, method: str, sft_history: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A study row's teacher: its epoch (None = SFT's best), rule, the shares of exact titles and true
    next items among its targets on the training prompts (`distillation_facts`) and, where SFT's
    history has that epoch, its validation HR@10 / NDCG@10 / validity."""
    epoch, rule = teacher_of(method) or (None, "")
    history = sft_history or []
    kept = [e for e in history if (e.get("epoch") == epoch if epoch is not None else e.get("best"))]
    valid = kept[-1] if kept else {}  # best: the last epoch marked best is the one kept
    return {"epoch": epoch, "rule": rule, **distillation_facts(root / teacher_dir(method), data_folder(root.parent, root.name)),
            "valid_epoch": valid.get("epoch"),
            **{f"valid_{k}": valid.get(k) for k in ("HR@10", "NDCG@10", "validity")}}


def study_rows(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m: r for m, r in dataset["methods"].items() if teacher_of(m) is not None}


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def study_lines(results: dict[str, Any]) -> list[str]:
    """results.md's study section: one line per row, teacher facts beside the gain over SFT."""
    lines: list[str] = []
    for name, dataset in results.items():
        rows = study_rows(dataset)
        if not rows:
            continue
        if not lines:
            lines += ["## When does SOFT help? Teacher and target rule (#15)", "",
                      "SOFT at a fixed alpha on targets distilled from SFT's epoch E (or its best) by each rule; "
                      "gains are over BIGRec-SFT on the same samples and stay out of the headline average. "
                      "Teacher columns: the shares of its targets on the training prompts that are exact titles "
                      "and that are the true next item (its top-1 hit rate there), its validation HR@10 / "
                      "validity at that epoch.", ""]
        lines += [f"### {name}", "", "| row | exact titles | true next item | teacher valid HR@10 | teacher validity | "
                  "test HR@10 | HR@10 gain % | HR@10 vs SFT |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in rows.values():
            t, vs = row["teacher"], row.get("vs_sft", {}).get("HR@10")
            vs_cell = "-" if not vs else f"{vs['diff']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}] p={vs['p']:.2f}"
            gain = row.get("gains", {}).get("HR@10")
            lines.append(f"| {row['label']} | {_number(t['exact_title_share'], 3)} | {_number(t['target_hit_share'], 3)} | "
                         f"{_number(t['valid_HR@10'], 4)} | "
                         f"{_number(t['valid_validity'], 2)} | {row['metrics']['HR@10']['value']:.4f} | "
                         f"{'n/a' if gain is None else f'{gain:+.1f}'} | {vs_cell} |")
        lines.append("")
    return [*lines, *study_finding_lines(results)] if lines else lines


def relative_bounds(facts: dict[str, float], base: float) -> tuple[float, float]:
    """A metric's 95% interval of the gain over SFT in %: resampled with SFT's values where results.json
    has it, else (an older table) the paired difference's interval over SFT's value taken as fixed."""
    if "relative_high_percent" in facts:
        return facts["relative_low_percent"], facts["relative_high_percent"]
    return 100 * facts["low"] / base, 100 * facts["high"] / base


def study_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The plotted study rows: the teacher's validation HR@10 and exact-title share, the test HR@10
    gain over SFT (%) and its 95% interval (`relative_bounds`, as the finding lines state it); rows
    without a gain or a teacher HR@10 drop out."""
    points = []
    for name, dataset in results.items():
        for row in study_rows(dataset).values():
            t, gain, vs = row["teacher"], row.get("gains", {}).get("HR@10"), row.get("vs_sft", {}).get("HR@10")
            baseline = dataset["methods"].get(row.get("vs_sft_baseline", "sft"), {})
            sft = baseline.get("metrics", {}).get("HR@10", {}).get("value")
            if t["valid_HR@10"] is None or gain is None:
                continue
            low, high = relative_bounds(vs, sft) if vs and sft else (gain, gain)
            points.append({"dataset": name, "epoch": t["epoch"], "rule": t["rule"], "valid_HR@10": t["valid_HR@10"],
                           "valid_epoch": t["valid_epoch"], "exact_title_share": t["exact_title_share"],
                           "gain": gain, "low": low, "high": high})
    return points


def _teacher_name(point: dict[str, Any]) -> str:
    return f"best epoch ({point['valid_epoch']})" if point["epoch"] is None else f"epoch {point['epoch']}"


def _gain(point: dict[str, Any]) -> str:
    return f"{point['gain']:+.0f}% [{point['low']:+.0f}%, {point['high']:+.0f}%]"


def _share(point: dict[str, Any]) -> str:
    share = point["exact_title_share"]
    return "" if share is None else f", {100 * share:.1f}% exact titles"


def study_finding_lines(results: dict[str, Any]) -> list[str]:
    """The study's paragraph, per dataset: the HR@10 gain over SFT of one teacher's target rules side by
    side, then of one rule's teacher epochs (weakest teacher first), and which intervals exclude 0.
    Stated as a description: a handful of teachers cannot test a trend, and the text says so."""
    lines: list[str] = []
    every = study_points(results)
    for name in dict.fromkeys(p["dataset"] for p in every):
        points = [p for p in every if p["dataset"] == name]
        clauses = []
        for epoch in dict.fromkeys(p["epoch"] for p in points):
            same = [p for p in points if p["epoch"] == epoch]
            if len(same) > 1:
                clauses.append(f"teacher {_teacher_name(same[0])}, by target rule: " +
                               ", ".join(f"{p['rule']} {_gain(p)}{_share(p)}" for p in same))
        for rule in dict.fromkeys(p["rule"] for p in points):
            same = sorted((p for p in points if p["rule"] == rule), key=lambda p: p["valid_HR@10"])
            if len(same) > 1:
                clauses.append(f"{rule} targets, by teacher: " + ", ".join(
                    f"{_teacher_name(p)} {_gain(p)} (teacher validation HR@10 {p['valid_HR@10']:.3f})" for p in same))
        if not clauses:
            clauses = [f"teacher {_teacher_name(p)}, {p['rule']} targets {_gain(p)}{_share(p)}" for p in points]
        sides = {"above SFT": [p for p in points if p["low"] > 0], "below SFT": [p for p in points if p["high"] < 0]}
        significant = "; ".join(f"{side}: " + ", ".join(f"{_teacher_name(p)} {p['rule']}" for p in found)
                                for side, found in sides.items() if found)
        lines.append(f"- **{name}** ({results[name]['n']} test samples, {len(points)} study row(s)), HR@10 gain over SFT "
                     f"[95% interval]: " + "; ".join(clauses) + ". Intervals that exclude 0: "
                     + (significant or "none") + ".")
    if not lines:
        return []
    return ["**When SOFT helps, in words.**", "", *lines, "",
            "A few teachers per dataset describe; they cannot test a trend. Intervals: paired "
            "bootstrap over the test samples, SFT's values resampled too.", ""]


def study_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Relative HR@10 gain over SFT with its 95% interval, against the teacher's validation HR@10 (left)
    and against the share of its targets that are exact titles (right: where the target rules of one
    teacher separate); a marker per rule, a colour per dataset, each point labelled by its epoch.
    Nothing written without a study row that has both numbers."""
    points = study_points(results)
    if not points:
        return None
    from softrec.bench import pyplot, write_png

    plt = pyplot()
    markers = dict(zip(STUDY_RULES, "os^", strict=False))
    colours = {name: f"C{i}" for i, name in enumerate(results)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    rules = list(dict.fromkeys(p["rule"] for p in points))
    for ax, key, label in ((axes[0], "valid_HR@10", "teacher's validation HR@10 (SFT at that epoch)"),
                           (axes[1], "exact_title_share", "share of its distilled targets that are exact titles")):
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel(label)
        shown = [p for p in points if p[key] is not None]
        xs = [p[key] for p in shown]
        if not xs:
            continue
        width = (max(xs) - min(xs)) or 0.2 * (abs(xs[0]) or 1.0)
        if max(xs) == min(xs):  # one teacher: a window around it, not an axis stretched by the dodge alone
            ax.set_xlim(xs[0] - width / 2, xs[0] + width / 2)
        step = 0.02 * width
        for p in shown:
            # one teacher's rules share its validation HR@10: dodged sideways so their intervals stay apart
            x = p[key] + step * (rules.index(p["rule"]) - (len(rules) - 1) / 2)
            ax.errorbar(x, p["gain"], yerr=[[p["gain"] - p["low"]], [p["high"] - p["gain"]]], capsize=3,
                        marker=markers.get(p["rule"], "x"), color=colours[p["dataset"]], linestyle="none")
            ax.annotate("best" if p["epoch"] is None else str(p["epoch"]), (x, p["gain"]),
                        textcoords="offset points", xytext=(5, 3))
    for rule in rules:
        axes[1].scatter([], [], marker=markers.get(rule, "x"), color="grey", label=rule)
    for name in dict.fromkeys(p["dataset"] for p in points):  # datasets by colour, not by a rule's marker
        axes[1].plot([], [], color=colours[name], linewidth=6, label=name)
    axes[0].set_ylabel("test HR@10 gain over SFT (%), 95% interval")
    fig.suptitle("When does SOFT help? (labels: teacher epoch)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return write_png(fig, path)
