"""The run report: Markdown + JSON + PNG plots comparing methods trained in one pipeline run.

Reads only artefacts (history.json, curriculum.json, eval/<split>-<grounding>/...), so it can be
rebuilt at any time: `softrec report DIR`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softrec.runs import atomic_dir, dumps_json

HEADLINE = ["HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "validity"]


REPORT_FILES = ("report.md", "metrics.json", "curriculum.png", "training.png")


def _read_json(path: Path, default: Any = None) -> Any:
    from softrec.runs import read_json_object

    if not path.exists():
        return default
    if isinstance(default, list):  # history.json: a list
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            from softrec.errors import UserError

            raise UserError(f"{path}: not valid JSON; rerun the stage that writes it") from None
    return read_json_object(path, "rerun the stage that writes it")


def run_summary(run_dir: Path, split: str, grounding: str) -> dict[str, Any]:
    """Test metrics, per-epoch history and (SOFT) alpha, distances and lambdas of one run."""
    from softrec.evaluation.compare import check_evaluation
    from softrec.evaluation.stage import evaluation_name

    info = _read_json(run_dir / "run.json", {})
    name = evaluation_name(split, grounding)
    eval_dir = run_dir / "eval" / name
    if (eval_dir / "metrics.json").exists():  # a stale or tampered result never reaches a report
        check_evaluation(run_dir, f"eval/{name}/metrics.json")
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "method": info.get("method"),
        "metrics": _read_json(eval_dir / "metrics.json", {}),
        "epochs": _read_json(run_dir / "history.json", []),
    }
    curriculum = _read_json(run_dir / "curriculum.json")
    if curriculum:
        summary["alpha"] = curriculum.get("alpha")
        summary["scheduler"] = curriculum.get("scheduler")
        summary["distance"] = {int(k): v for k, v in curriculum.get("distances", {}).items()}
        summary["lambda"] = {int(k): v for k, v in curriculum.get("lambdas", {}).items()}
    return summary


def _bootstrap(baseline_dir: Path, other_dir: Path, split: str, grounding: str) -> dict[str, Any] | None:
    """Paired bootstrap of per-sample metrics, other minus baseline; None if either lacks predictions."""
    from softrec.evaluation.compare import compare_predictions
    from softrec.evaluation.stage import evaluation_name

    a, b = (run / "eval" / evaluation_name(split, grounding) / "predictions.jsonl" for run in (baseline_dir, other_dir))
    if not (a.exists() and b.exists()):
        return None
    return {d.metric: d.to_dict() for d in compare_predictions(a, b)}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plots(summaries: dict[str, dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made = []
    soft = {n: s for n, s in summaries.items() if s.get("distance") or s.get("lambda")}
    if soft:
        fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
        for name, s in soft.items():
            if s.get("distance"):
                ax_d.plot(list(s["distance"]), list(s["distance"].values()), marker="o", label=name)
            if s.get("lambda"):
                ax_l.plot(list(s["lambda"]), list(s["lambda"].values()), marker="o", label=name)
        ax_d.set(title="probe distance d_k (epoch 0 = untuned)", xlabel="epoch", ylabel="mean L2")
        ax_l.set(title="lambda_t (weight of self-distilled targets)", xlabel="epoch", ylim=(-0.05, 1.05))
        for ax in (ax_d, ax_l):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "curriculum.png", dpi=120)
        plt.close(fig)
        made.append("curriculum.png")
    fig, (ax_loss, ax_hr) = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in summaries.items():
        epochs = [e for e in s.get("epochs", []) if "epoch" in e]
        if epochs:
            ax_loss.plot([e["epoch"] for e in epochs], [e.get("train_loss") for e in epochs], marker="o", label=name)
            ax_hr.plot([e["epoch"] for e in epochs], [(e.get("valid") or {}).get("HR@10") for e in epochs],
                       marker="o", label=name)
    ax_loss.set(title="training loss per epoch", xlabel="epoch")
    ax_hr.set(title="validation HR@10 per epoch", xlabel="epoch")
    for ax in (ax_loss, ax_hr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)
    made.append("training.png")
    return made


def build_report(
    out: str | Path,
    runs: dict[str, Path],
    *,
    split: str = "test",
    grounding: str = "l2",
    baseline: str = "sft",
    title: str = "softrec report",
    notes: list[str] | None = None,
) -> Path:
    """Write OUT/report/{report.md, metrics.json, *.png} atomically; returns the report dir."""
    out = Path(out)
    summaries = {name: run_summary(Path(path), split, grounding) for name, path in runs.items()}
    comparisons = {}
    if baseline in runs:
        for name, path in runs.items():
            if name != baseline:
                result = _bootstrap(Path(runs[baseline]), Path(path), split, grounding)
                if result is not None:
                    comparisons[f"{name} vs {baseline}"] = result
    # only a report directory softrec wrote is replaced; files added to it make this a UserError
    with atomic_dir(out / "report", "report", legacy=REPORT_FILES) as tmp:
        plots = _plots(summaries, tmp)
        payload = {"split": split, "grounding": grounding, "methods": summaries, "comparisons": comparisons}
        (tmp / "metrics.json").write_text(dumps_json(payload), encoding="utf-8")
        (tmp / "report.md").write_text(_markdown(title, payload, plots, notes or []), encoding="utf-8")
    return out / "report"


def _dtype_lines(methods: dict[str, dict[str, Any]]) -> list[str]:
    """Which dtype decoded each LLM row (metrics.json `decoded_in`), and a warning when they differ:
    bf16 moves near-tied beams (benchmarks/results/engine-dtype-floor-2026-12-05), so rows decoded in
    different dtypes differ by more than their methods."""
    dtypes = {name: s["metrics"].get("decoded_in") for name, s in methods.items() if s["metrics"].get("decoded_in")}
    if not dtypes:
        return []
    if len(set(dtypes.values())) == 1:
        return [f"- LLM rows decoded in {next(iter(dtypes.values()))}."]
    listed = ", ".join(f"{name}: {dtype}" for name, dtype in dtypes.items())
    return [f"- WARNING: rows decoded in different dtypes ({listed}); re-evaluate them with one "
            "`--set eval.dtype=...` before comparing."]


def _markdown(title: str, payload: dict[str, Any], plots: list[str], notes: list[str]) -> str:
    methods = payload["methods"]
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += _dtype_lines(methods)
    any_metrics = next((s["metrics"] for s in methods.values() if s["metrics"]), {})
    n = any_metrics.get("n", "?")
    lines += ["", f"Test metrics ({payload['split']} split, n = {n}, grounding `{payload['grounding']}`, full ranking):", ""]
    cols = [c for c in HEADLINE if c in any_metrics]
    lines.append("| method | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for name, s in methods.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s["metrics"].get(c, "-")) for c in cols) + " |")
    for label, result in payload["comparisons"].items():
        lines += ["", f"Paired bootstrap, {label} (difference, 95% CI, p):", ""]
        lines.append("| metric | diff | 95% CI | p |")
        lines.append("|---|---|---|---|")
        for metric, r in result.items():
            if metric in HEADLINE:
                lines.append(f"| {metric} | {r['diff']:+.4f} | [{r['low']:+.4f}, {r['high']:+.4f}] | {r['p_value']:.3f} |")
    for name, s in methods.items():
        if s.get("lambda"):
            lines += ["", f"Curriculum of `{name}` (scheduler {s.get('scheduler')}, alpha {s.get('alpha')}):", ""]
            lines.append("| epoch | distance d_k | lambda_k |")
            lines.append("|---|---|---|")
            for epoch in sorted(set(s.get("distance", {})) | set(s["lambda"])):
                lines.append(f"| {epoch} | {_fmt(s.get('distance', {}).get(epoch, '-'))} | {_fmt(s['lambda'].get(epoch, '-'))} |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
