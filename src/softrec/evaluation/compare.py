"""Paired bootstrap comparison of two evaluations on the same samples.

Each side's per-sample HR@K / NDCG@K come from its predictions file (`target_rank`). The paired
difference B - A is resampled over samples (seeded, vectorised); the interval is the percentile
interval of the resampled mean difference, and the two-sided p-value is the share of resampled
means at least as far from the observed mean as the observed mean is from 0 (the bootstrap
distribution shifted to the null of no difference), with the usual +1 correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from softrec.errors import UserError
from softrec.metrics import DEFAULT_KS, metric_matrix, paired_bootstrap
from softrec.runs import MANIFEST, RunDir, read_jsonl

LATEST = ("metrics.json", "predictions.jsonl")


@dataclass
class MetricDiff:
    metric: str
    a: float
    b: float
    diff: float  # mean of B - A
    low: float  # 95% interval of the mean difference
    high: float
    p_value: float

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def predictions_path(path: str | Path) -> Path:
    """A run directory (its predictions.jsonl) or a predictions file."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no predictions file; run `softrec evaluate --run DIR` first")
    _check_against_manifest(path)
    return path


def _check_against_manifest(path: Path) -> None:
    """A predictions file inside a run directory must still be what its evaluation recorded: same
    checksum, computed from the run's current weights, and (the top-level latest copy) from the same
    evaluation as the metrics.json beside it. A run that records its artefacts (run.json) with its
    manifest deleted is refused, not trusted."""
    for run_dir in path.resolve().parents:
        if (run_dir / MANIFEST).exists() or (run_dir / "run.json").exists():
            check_evaluation(run_dir, str(path.resolve().relative_to(run_dir)))
            return


def check_evaluation(run_dir: Path, name: str) -> None:
    """UserError unless evaluation artefact `name` (predictions.jsonl or metrics.json, at the top
    level or under eval/) of `run_dir` is intact and current (see `_check_against_manifest`)."""
    run = RunDir(run_dir)
    rebuild = f"rerun `softrec evaluate --run {run_dir} --force`"
    path = Path(name)
    if path.name not in LATEST:  # some other file kept in the run: only its recorded checksum
        run.check(name, rebuild)
        return
    run.require(name, rebuild)
    run.check_inputs(name, rebuild)
    entries = run.manifest()["artefacts"]
    other = str(path.with_name(next(f for f in LATEST if f != path.name)))
    if other not in entries:
        return
    run.check(other, rebuild)  # the pair on disk is what the manifest says, not half of a publish
    mine, theirs = entries[name], entries[other]
    if mine.get("key") != theirs.get("key") or (
            Path(mine.get("source", name)).parent != Path(theirs.get("source", other)).parent):
        raise UserError(f"{run_dir / name} and {run_dir / other} come from different evaluations "
                        f"(interrupted while publishing?); {rebuild}")


def load_predictions(path: str | Path) -> dict[str, int | None]:
    """sample_id -> target_rank."""
    path = predictions_path(path)
    ranks: dict[str, int | None] = {}
    for number, row in enumerate(read_jsonl(path), 1):
        if "sample_id" not in row or "target_rank" not in row:
            raise UserError(f"{path}:{number}: expected fields 'sample_id' and 'target_rank'")
        if row["sample_id"] in ranks:
            raise UserError(f"{path}:{number}: sample_id {row['sample_id']!r} appears twice")
        ranks[str(row["sample_id"])] = row["target_rank"]
    if not ranks:
        raise UserError(f"{path}: no predictions")
    return ranks


def compare_predictions(path_a: str | Path, path_b: str | Path, *, ks: Sequence[int] = DEFAULT_KS,
                        resamples: int = 10_000, seed: int = 0) -> list[MetricDiff]:
    ranks_a, ranks_b = load_predictions(path_a), load_predictions(path_b)
    if set(ranks_a) != set(ranks_b):
        only_a, only_b = set(ranks_a) - set(ranks_b), set(ranks_b) - set(ranks_a)
        example = sorted(only_a or only_b)[0]
        raise UserError(
            f"{predictions_path(path_a)} and {predictions_path(path_b)} hold different samples "
            f"({len(only_a)} only in A, {len(only_b)} only in B, e.g. {example!r}); "
            "compare evaluations of the same split"
        )
    ids = sorted(ranks_a)
    names, matrix_a = metric_matrix([ranks_a[i] for i in ids], ks)
    _, matrix_b = metric_matrix([ranks_b[i] for i in ids], ks)
    diff, low, high, p_value = paired_bootstrap(matrix_a, matrix_b, resamples=resamples, seed=seed)
    mean_a, mean_b = matrix_a.mean(axis=0), matrix_b.mean(axis=0)
    return [
        MetricDiff(name, float(mean_a[j]), float(mean_b[j]), float(diff[j]), float(low[j]),
                   float(high[j]), float(p_value[j]))
        for j, name in enumerate(names)
    ]


def format_table(diffs: Sequence[MetricDiff], label_a: str, label_b: str, n: int) -> str:
    lines = [f"A = {label_a}", f"B = {label_b}", f"{n} paired samples; difference = B - A, 95% bootstrap CI", ""]
    lines.append(f"{'metric':<9} {'A':>8} {'B':>8} {'B-A':>9} {'95% CI':>21} {'p':>7}")
    for d in diffs:
        interval = f"[{d.low:+.4f}, {d.high:+.4f}]"
        lines.append(f"{d.metric:<9} {d.a:8.4f} {d.b:8.4f} {d.diff:+9.4f} {interval:>21} {d.p_value:7.4f}")
    return "\n".join(lines)
