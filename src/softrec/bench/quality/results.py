"""The results of finished rows: test metrics with bootstrap intervals, paired differences against
SFT, the alpha sweep's chosen row, relative gains."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softrec.bench.quality.execution import StepLog
from softrec.bench.quality.planning import data_folder, eval_folder
from softrec.bench.quality.study import DISTILLED, distillation_facts, teacher_facts
from softrec.bench.quality.suites import (
    GAIN_METRICS,
    PAPER_MEAN_GAIN_PERCENT,
    SOFT_PAIRS,
    SPLIT,
    WITH_INTERVAL,
    Suite,
    alpha_of,
    label,
    sweep_twin,
    teacher_of,
)
from softrec.errors import UserError


def _interval(values: Any) -> dict[str, float]:
    return {"low": float(values[0]), "high": float(values[1])}


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (not estimable) -> null in results.json


NOT_RECORDED = "not recorded (a step finished before steps.json named machines)"


def collect(suite: Suite, out: Path, datasets: list[str], methods: list[str], log: StepLog,
            resamples: int = 10_000) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Per dataset and method: test metrics with 95% bootstrap intervals, paired differences vs SFT;
    and the average relative gains over datasets (`average_gains`) with their intervals."""
    import numpy as np

    from softrec.evaluation.compare import load_predictions, metric_matrix, paired_bootstrap
    from softrec.metrics import DEFAULT_KS, paired_sensitivity

    seconds: dict[tuple[str, str], float] = {}
    ran_on: dict[tuple[str, str], set[str]] = {}
    resumed: set[tuple[str, str]] = set()  # a step's time covers only its final process
    for info in log.done.values():
        key = (info["dataset"], info["owner"])
        seconds[key] = seconds.get(key, 0.0) + info["seconds"]
        if "share_timed" in info:
            resumed.add(key)
        ran_on.setdefault(key, set()).add(info.get("ran_on") or NOT_RECORDED)
    results: dict[str, Any] = {}
    strata: dict[str, list[tuple[Any, Any]]] = {}  # per SOFT/SFT pair: each dataset's gain columns
    twins = [t for m in methods if (t := sweep_twin(m, suite)) is not None and t not in methods]
    for name in datasets:
        rows: dict[str, Any] = {}
        ranks: dict[str, dict[str, int | None]] = {}
        for method in [*methods, *dict.fromkeys(twins)]:
            folder = eval_folder(out, name, method, suite.test_limit)
            if not (folder / "predictions.jsonl").exists():
                continue
            ranks[method] = load_predictions(folder / "predictions.jsonl")
            rows[method] = {"label": label(method), "run_dir": str(out / name / method),
                            "seconds": round(seconds.get((name, method), 0.0), 1),
                            "seconds_partial": (name, method) in resumed,
                            "ran_on": sorted(ran_on.get((name, method), {NOT_RECORDED})),
                            "summary": json.loads((folder / "metrics.json").read_text())}
        if not rows:
            continue
        ids = sorted(next(iter(ranks.values())))
        for method, method_ranks in ranks.items():
            if sorted(method_ranks) != ids:
                raise UserError(f"{out / name / method}: its predictions cover other {SPLIT} samples than "
                                f"{next(iter(ranks))}'s; rerun its evaluation with the suite's settings")
        matrices = {}
        for method, method_ranks in ranks.items():
            names, matrices[method] = metric_matrix([method_ranks[i] for i in ids], DEFAULT_KS)
        zeros = np.zeros_like(next(iter(matrices.values())))
        for method, matrix in matrices.items():
            mean, low, high, _ = paired_bootstrap(zeros, matrix, resamples=resamples)
            rows[method]["metrics"] = {n: {"value": float(mean[j]), **_interval((low[j], high[j]))}
                                       for j, n in enumerate(names)}
            baseline = SOFT_PAIRS.get(method, "sft")  # LLaRA-SOFT against LLaRA-SFT, the rest against SFT
            if baseline in matrices and method != "sft":
                diff, low, high, p = paired_bootstrap(matrices[baseline], matrix, resamples=resamples)
                detectable, chance = paired_sensitivity(matrices[baseline], matrix,
                                                        gain=PAPER_MEAN_GAIN_PERCENT / 100)
                rows[method]["vs_sft"] = {n: {"diff": float(diff[j]), **_interval((low[j], high[j])),
                                              "p": float(p[j]), "detectable_percent": _finite(100 * detectable[j]),
                                              "chance_at_paper_gain": _finite(chance[j])}
                                          for j, n in enumerate(names)}
                rows[method]["vs_sft_baseline"] = baseline
                _relative_intervals(rows[method]["vs_sft"], names, matrices[baseline], matrix, resamples)
        for method in rows:
            rows[method]["history"] = _history(out / name / method)
        _twins(rows, suite, methods)
        for twin in twins:  # read for the study row only: not asked for, so not a row of the table
            rows.pop(twin, None)
        _study(rows, out / name)
        _choose_alpha(rows, [m for m in methods if alpha_of(m) is not None and m not in rows])
        results[name] = {"n": len(ids), "methods": rows, "gains": _gains(rows)}
        columns = [names.index(metric) for metric in GAIN_METRICS]
        for soft, sft in SOFT_PAIRS.items():
            run = rows.get(soft, {}).get("chosen", soft)  # the sweep's chosen alpha for the headline row
            if soft in rows and sft in matrices and run in matrices:
                strata.setdefault(f"{soft}/{sft}", []).append((matrices[sft][:, columns], matrices[run][:, columns]))
        if (out / name / "sft" / DISTILLED).exists():  # the SOFT rows' targets: SFT's kept epoch, raw text
            results[name]["distilled"] = distillation_facts(out / name / "sft", data_folder(out, name))
    return results, average_gains(results, strata, resamples)


def _relative_intervals(vs_sft: dict[str, dict[str, Any]], names: list[str], base: Any, matrix: Any,
                       resamples: int) -> None:
    """Each table metric's gain over SFT in % with its 95% interval, SFT's own values resampled too
    (as the averaged gain's interval does): at ~15 SFT hits in 1000, dividing the paired difference's
    interval by a fixed SFT value understates the upper bound by half. Left out where SFT scored 0."""
    from softrec.metrics import stratified_mean_gain

    for metric in WITH_INTERVAL:
        j = names.index(metric)
        if base[:, j].mean() > 0:
            _, low, high, _ = stratified_mean_gain([(base[:, [j]], matrix[:, [j]])], resamples=resamples)
            vs_sft[metric].update(relative_low_percent=low, relative_high_percent=high)


def _history(run: Path) -> list[dict[str, Any]] | None:
    """Per epoch of an LLM run: validation HR@10 / NDCG@10 / validity, lambda and d_k (SOFT), best."""
    path = run / "history.json"
    if not path.exists():
        return None
    keep = ("epoch", "best", "lambda", "distance", "train_loss")
    return [{**{k: e[k] for k in keep if k in e},
             **{k: e["valid"][k] for k in ("HR@10", "NDCG@10", "validity") if k in e.get("valid", {})}}
            for e in json.loads(path.read_text(encoding="utf-8"))]


def _validation_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """A run's best epoch on validation, ordered as epoch selection orders it (HR@10, NDCG@10, validity)."""
    best = [e for e in row.get("history") or [] if e.get("best")] or [{}]
    return tuple(float(best[-1].get(k, float("-inf"))) for k in ("HR@10", "NDCG@10", "validity"))


def _choose_alpha(rows: dict[str, Any], pending: Sequence[str] = ()) -> None:
    """The reported SOFT row of an alpha sweep: the run best on validation (test metrics never looked at).
    While `pending` sweep runs have not finished, the label says the choice is provisional."""
    import copy

    sweep = [m for m in rows if alpha_of(m) is not None]
    if not sweep or "soft" in rows:
        return
    chosen = max(sweep, key=lambda m: (_validation_key(rows[m]), -sweep.index(m)))
    how = "chosen on validation"
    if pending:
        how = f"best on validation so far; alpha {', '.join(f'{alpha_of(m):g}' for m in pending)} not finished"
    rows["soft"] = {**copy.deepcopy(rows[chosen]), "label": f"BIGRec-SOFT (alpha={alpha_of(chosen):g}, {how})",
                    "chosen_from": {m: _validation_key(rows[m]) for m in sweep}, "chosen": chosen,
                    "pending": list(pending)}


def _twins(rows: dict[str, Any], suite: Suite, methods: Sequence[str]) -> None:
    """A study row whose run is an alpha-sweep row (`sweep_twin`) shows that row's results under its
    own name, saying so; planning trains it once."""
    import copy

    for method in methods:
        twin = sweep_twin(method, suite)
        if twin in rows and method not in rows:
            rows[method] = {**copy.deepcopy(rows[twin]), "label": f"{label(method)} (the {label(twin)} run)",
                            "same_run_as": twin}


def _study(rows: dict[str, Any], root: Path) -> None:
    """Each soft-t{E}-{rule} row's teacher facts and relative gains over SFT, kept on the row itself:
    the study's rows never enter `gains`, hence never the headline average."""
    sft_history = rows["sft"]["history"] if "sft" in rows else _history(root / "sft")
    for method, row in rows.items():
        if teacher_of(method) is not None:
            row["teacher"] = teacher_facts(root, method, sft_history)
            if "sft" in rows:
                row["gains"] = _relative(rows["sft"], row)


def _relative(sft: dict[str, Any], soft: dict[str, Any]) -> dict[str, float | None]:
    """Relative gain (%) of a row over SFT, per metric (None where SFT scored 0)."""
    pair = {}
    for metric in GAIN_METRICS:
        base, value = sft["metrics"][metric]["value"], soft["metrics"][metric]["value"]
        pair[metric] = 100.0 * (value - base) / base if base > 0 else None
    return pair


def _gains(rows: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Relative gain (%) of each SOFT row over its SFT row, per metric (None where SFT scored 0)."""
    return {f"{soft}/{sft}": _relative(rows[sft], rows[soft])
            for soft, sft in SOFT_PAIRS.items() if soft in rows and sft in rows}


def average_gains(results: dict[str, Any], strata: dict[str, list[tuple[Any, Any]]] | None = None,
                  resamples: int = 10_000) -> dict[str, dict[str, Any]]:
    """The paper's headline: the mean relative gain over datasets and metrics (defined ones only); with
    each dataset's per-sample metric columns of the pair (`strata`), its 95% interval from a stratified
    paired bootstrap over the test samples (`softrec.metrics.stratified_mean_gain`)."""
    from softrec.metrics import stratified_mean_gain

    pooled: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for dataset in results.values():
        for pair, gains in dataset["gains"].items():
            for value in gains.values():
                if value is None:
                    skipped[pair] = skipped.get(pair, 0) + 1
                else:
                    pooled.setdefault(pair, []).append(value)
    averages: dict[str, dict[str, Any]] = {
        pair: {"mean_percent": statistics.fmean(values), "terms": len(values), "undefined": skipped.get(pair, 0)}
        for pair, values in pooled.items()}
    for pair, pair_strata in (strata or {}).items():
        if pair in averages:
            _, low, high, _ = stratified_mean_gain(pair_strata, resamples=resamples)
            averages[pair].update(low_percent=low, high_percent=high)
    return averages
