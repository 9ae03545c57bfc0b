"""The SOFT recipe, end to end: prepare -> SFT -> distill -> SOFT -> evaluate both -> report.

Each stage reads and writes artefacts in OUT and is skipped when its artefact is still valid, so
rerunning the same command after a crash (or with a changed later-stage setting) redoes only what is
missing or stale.

    OUT/data/            prepared dataset
    OUT/sft/             tuning-only baseline (+ distilled.jsonl, the self-distilled targets)
    OUT/soft/            SOFT (or OUT/soft-alpha<A>/ per swept alpha, the best on validation kept)
    OUT/report/          report.md, metrics.json, plots
"""

from __future__ import annotations

import time
from pathlib import Path

from softrec.config import Config
from softrec.data.dataset import PreparedDataset
from softrec.methods import DEFAULT_SOFT, is_soft, soft_variant


def _log(message: str) -> None:
    print(f"[softrec {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(config: Config, out: Path) -> PreparedDataset:
    from softrec.data.protocol import prepare_dataset

    _log(f"prepare: dataset {config.data.dataset} -> {out / 'data'}")
    return prepare_dataset(config.data, out / "data")


def train(config: Config, dataset: PreparedDataset, run_dir: Path, *, distilled_from: Path | None = None) -> Path:
    """The training stage (SOFT: on `distilled_from`'s self-distilled targets, with the method's own
    curriculum); train_llm reuses a finished run with the same key and resumes an interrupted one."""
    from softrec.evaluation.validation import validator_for
    from softrec.inference.distill import load_distilled
    from softrec.training.trainer import train_llm

    _log(f"train {config.train.method}: {config.model.name} -> {run_dir}")
    distilled = load_distilled(distilled_from, dataset) if is_soft(config.train.method) else None
    train_llm(config, dataset, run_dir, resume=(run_dir / "checkpoints").exists(),
              distilled=distilled, validator=validator_for(config, dataset))
    return run_dir


def evaluate(config: Config, dataset: PreparedDataset, run_dir: Path, split: str = "test") -> None:
    """The evaluation stage on one run with its own settings and the pipeline's grounding and beams
    (it reuses a still-valid evaluation by its manifest key)."""
    from softrec.evaluation.stage import evaluate_run, run_config

    _log(f"evaluate {run_dir.name} on {split} ({config.eval.grounding} grounding)")
    run_settings = run_config(run_dir, flags={"eval.grounding": config.eval.grounding,
                                              "eval.num_beams": config.eval.num_beams})
    evaluate_run(run_dir, run_settings, data=dataset.path, split=split,
                 preflight=False)  # run_pipeline did it once up front


def run_pipeline(config: Config, out: str | Path, *, sweep_alpha: bool = False, preflight: bool = True) -> Path:
    """The whole recipe; returns OUT/report. `preflight` estimates memory/time first (refusing what
    cannot fit)."""
    from softrec.inference.distill import distill
    from softrec.report import build_report
    from softrec.runs import claim_dir

    out = Path(out)
    # OUT is this command's: refused (untouched) when it holds anything else than its stages
    claim_dir(out, "pipeline", legacy=("data/dataset.json", "sft/run.json", "report/report.md"))
    dataset = prepare(config, out)
    soft_method = soft_variant(config.train.method)
    alphas = config.soft.alpha_sweep if sweep_alpha and soft_method == DEFAULT_SOFT else [config.soft.alpha]
    if preflight:
        _preflight(config, dataset, len(alphas))
    sft_dir = train(config.with_(train={"method": "sft"}), dataset, out / "sft")
    _log("distill: self-distilled targets from the SFT model")
    distill(sft_dir, dataset, config)

    soft_runs = {}
    for alpha in alphas:
        name = "soft" if len(alphas) == 1 else f"soft-alpha{alpha:g}"
        soft_config = config.with_(train={"method": soft_method}, soft={"alpha": alpha})
        soft_runs[name] = train(soft_config, dataset, out / name, distilled_from=sft_dir)
    best = _best_on_validation(soft_runs, config.train.selection_metric, config.train.selection_tie_break)

    runs = {"sft": sft_dir, **({best: soft_runs[best]} if len(soft_runs) > 1 else soft_runs)}
    for run_dir in runs.values():
        evaluate(config, dataset, run_dir)
    notes = [
        f"dataset `{dataset.name}` ({dataset.path}); model `{config.model.name}`; "
        f"train/valid/test samples {len(dataset.split('train'))}/{len(dataset.split('valid'))}/{len(dataset.split('test'))}",
    ]
    if dataset.name == "demo":
        notes.append("the demo's reader sequences are SYNTHETIC: these numbers are a smoke test, never a benchmark")
    if len(soft_runs) > 1:
        notes.append(f"alpha swept over {alphas}; `{best}` selected on validation {config.train.selection_metric}")
    report = build_report(out, runs, grounding=config.eval.grounding, title=f"SFT vs SOFT on {dataset.name}", notes=notes)
    _log(f"report: {report / 'report.md'}")
    return report


def _preflight(config: Config, dataset: PreparedDataset, soft_runs: int) -> None:
    """The peak stages (SOFT training with both targets per row, distillation, test evaluation),
    then the whole recipe's time: SFT, distillation, each SOFT run and the two evaluations."""
    from softrec.data.subsets import training_samples
    from softrec.models.gguf import SOURCES, checkpoint_dir, is_converted
    from softrec.preflight import duration, estimate_train, preflight_generation, preflight_train

    soft = preflight_train(config.with_(train={"method": soft_variant(config.train.method)}), dataset)
    distill = preflight_generation(config, dataset, len(training_samples(dataset, config)), stage="distill",
                                   num_beams=config.soft.distill_beams, max_new_tokens=config.soft.distill_max_new_tokens)
    evaluate = preflight_generation(config, dataset, len(dataset.split("test")), stage="evaluate")
    if soft is None or distill is None or evaluate is None:
        return
    sft = estimate_train(config.with_(train={"method": "sft"}), dataset)
    total = sft.seconds + distill.seconds + soft_runs * soft.seconds + 2 * evaluate.seconds
    name = config.model.name
    first_use = name in SOURCES and not is_converted(name)
    print(f"preflight total: ~{duration(total)} for SFT, distillation, {soft_runs} SOFT run(s) and 2 evaluations"
          + (f", plus the one-time conversion of {name} into {checkpoint_dir(name)} (1-3 min)" if first_use else ""))


def _best_on_validation(runs: dict[str, Path], metric: str = "HR@10", tie_break: bool = False) -> str:
    """The run whose best epoch ranks highest by the trainer's own selection order
    (`train.selection_metric`, `train.selection_tie_break`); a tie keeps the earlier run."""
    import json

    from softrec.training.selection import selection_key

    def best(run_dir: Path) -> tuple[float, ...]:
        path = run_dir / "history.json"
        history = json.loads(path.read_text()) if path.exists() else []
        keys = [selection_key(e["valid"], metric, tie_break) for e in history if e.get("valid")]
        return max(keys, default=(float("-inf"),))

    return max(runs, key=lambda name: best(runs[name]))
