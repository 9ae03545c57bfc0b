"""The evaluation stage: one call evaluates a run directory (`evaluate_run`).

`softrec evaluate`, the pipeline and the benchmarks all go through it. It works under `torchrun`
(gloo on CPU): every rank evaluates its shard, rank 0 writes the files and prints. Results go to
RUN_DIR/eval/<split>-<grounding>[-limitN][-beamsN...]/ (`evaluation_name`: the suffixes name what
differs from the full evaluation) and the latest evaluation is copied to RUN_DIR/metrics.json and
RUN_DIR/predictions.jsonl. A rerun with the same settings, data and weights reuses the recorded
result (manifest key) unless `force`. LLM evaluations run in resumable chunks (`EVAL_CHUNK`).

How a run is ranked depends on run.json's method (`softrec.methods`): classic recommenders score
the catalogue, LLM runs (and ICL runs, the untuned base with a few-shot prompt) generate and ground.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from softrec.config import Config
from softrec.errors import UserError
from softrec.methods import is_classic

# LLM evaluations run in chunks of this many samples, each kept under eval/<name>.parts/ until the
# result is written, so a killed evaluation redoes only its unfinished chunk. A multiple of the
# generation batch size and of the world size keeps batches (and so results) as in one pass.
EVAL_CHUNK = 256
LATEST = ("metrics.json", "predictions.jsonl")


# ---------------------------------------------------------------- distributed
@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """(rank, world); joins the gloo process group torchrun describes when WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ---------------------------------------------------------------- naming
def evaluation_name(split: str, grounding: str, *, limit: int | None = None, beams: int | None = None,
                    max_new_tokens: int | None = None, length_penalty: float | None = None,
                    exclude_history: bool = False, dtype: str | None = None, epoch: int | None = None) -> str:
    """The folder under RUN_DIR/eval/ of one evaluation. The full evaluation with the run's own
    decoding settings is `<split>-<grounding>` (what `softrec report` reads); anything else that changes
    its numbers (a limit, other beams, another epoch's weights, ...) is in the name, so a quick rerun
    never overwrites it."""
    name = f"{split}-{grounding}"
    name += f"-limit{limit}" if limit else ""
    name += f"-beams{beams}" if beams is not None else ""
    name += f"-maxtok{max_new_tokens}" if max_new_tokens is not None else ""
    name += f"-lp{length_penalty:g}" if length_penalty is not None else ""
    name += "-exclhist" if exclude_history else ""
    name += f"-epoch{epoch}" if epoch is not None else ""
    return name + (f"-{dtype}" if dtype is not None else "")


def _name_for(run_dir: Path, config: Config, split: str, limit: int | None, epoch: int | None) -> str:
    """evaluation_name with the decoding settings that differ from the run's saved config.yaml."""
    from softrec.config import load_config

    ev = config.eval
    saved = ev  # a run without a readable config.yaml: nothing to differ from but the limit
    if (run_dir / "config.yaml").exists():
        with contextlib.suppress(UserError):
            saved = load_config(run_dir / "config.yaml").eval

    def changed(field: str) -> Any:
        return getattr(ev, field) if getattr(ev, field) != getattr(saved, field) else None

    return evaluation_name(split, ev.grounding, limit=limit, beams=changed("num_beams"),
                           max_new_tokens=changed("max_new_tokens"), length_penalty=changed("length_penalty"),
                           exclude_history=bool(changed("exclude_history")), dtype=changed("dtype"), epoch=epoch)


# ---------------------------------------------------------------- what a run is
def run_info(run_dir: Path) -> dict[str, Any]:
    from softrec.runs import RunDir

    if not (run_dir / "run.json").is_file():
        raise UserError(f"{run_dir}: not a softrec run directory (no run.json)")
    return RunDir(run_dir).info()


def run_config(run_dir: Path | None, config_path: str | Path | None = None, overrides: Sequence[str] = (),
               flags: dict[str, Any] | None = None) -> Config:
    """defaults < the run's saved config.yaml (or `config_path`) < `overrides` (KEY=VALUE) < `flags`."""
    from softrec.config import load_config

    if config_path is None and run_dir is not None and (run_dir / "config.yaml").exists():
        config_path = run_dir / "config.yaml"
    return load_config(config_path, list(overrides), flags or {})


def run_dataset(path: str | Path | None, info: dict[str, Any]) -> Any:
    """The prepared dataset at `path` (default: the run's), refused when it is not the data the run
    was trained on."""
    from softrec.data.dataset import PreparedDataset

    path = path or info.get("dataset")
    if not path:
        raise UserError("--data: no prepared dataset given and run.json names none")
    dataset = PreparedDataset.load(path)
    trained_on = info.get("dataset_key")
    if trained_on and info.get("method") != "icl" and dataset.checksum != trained_on:
        # same directory re-prepared (another k-core, seed, sizes) or another dataset: the run's
        # item ids and titles mean something else there, so its metrics would be silently wrong
        raise UserError(
            f"{dataset.path}: dataset key {dataset.checksum} differs from the run's ({trained_on}); "
            "the data changed since training. Evaluate with the data the run was trained on, or retrain"
        )
    return dataset


def _load_llm(run_dir: Path, info: dict[str, Any], weights: Path | None) -> tuple[Any, Any, Any | None]:
    """(model, tokenizer, grounding_model); full fine-tuning needs the untuned base for grounding.
    `weights`: an epoch's folder instead of the run's best."""
    from softrec.models.registry import (
        is_whole_model,
        load_backbone,
        load_run_model,
        weights_folder,
    )

    if info.get("method") == "icl":
        model, tokenizer = load_backbone(info["base_model"])
        return model, tokenizer, None
    model, tokenizer = load_run_model(run_dir, weights)
    base = load_backbone(info["base_model"])[0] if is_whole_model(weights_folder(run_dir, weights)) else None
    return model, tokenizer, base


def _prompt_fn(info: dict[str, Any], dataset: Any, template: str, tokenizer: Any) -> Callable | None:
    if info.get("method") != "icl":
        return None
    from softrec.baselines.icl import icl_prompt_fn

    return icl_prompt_fn(dataset, int(info.get("shots", 0)), seed=int(info.get("seed", 42)),
                         template=template, tokenizer=tokenizer)


def _weights_fingerprint(run_dir: Path, info: dict[str, Any]) -> str:
    from softrec.runs import path_sha256

    if not is_classic(info.get("method")) and info.get("method") != "icl":
        from softrec.models.registry import check_run_weights

        check_run_weights(run_dir, info)  # before any work: deleted or foreign weights are refused
    for name in ("adapter", "model", "classic.safetensors"):  # classic: retraining changes results too
        if (run_dir / name).exists():
            return path_sha256(run_dir / name)
    return str(info.get("base_model"))


def rank_run(run_dir: Path, info: dict[str, Any], dataset: Any, samples: Sequence[Any], config: Config,
             progress: bool, parts: Path | None = None, weights: Path | None = None) -> Any:
    """EvalResult for `samples`, dispatching on run.json's method; LLM runs resume from `parts`;
    `weights`: an epoch's folder (RUN_DIR/epochs/epoch-N) instead of the run's best."""
    from softrec.evaluation.evaluate import EvalResult, evaluate_scores, summarize

    if is_classic(info.get("method")):
        from softrec.baselines import load_ranker

        return evaluate_scores(load_ranker(run_dir)(samples), samples, config.eval)
    model, tokenizer, grounding_model = _load_llm(run_dir, info, weights)
    template = info.get("template") or config.model.template

    def run(chunk: Sequence[Any]) -> Any:
        from softrec.evaluation import (
            evaluate,  # looked up at call time (tests replace evaluate_model)
        )

        return evaluate.evaluate_model(
            model, tokenizer, dataset, chunk, config.eval, template=template,
            base_model_name=info.get("base_model"), progress=progress,
            prompt_fn=_prompt_fn(info, dataset, template, tokenizer), grounding_model=grounding_model,
        )

    if parts is None:
        return run(samples)
    from softrec.runs import resumable_chunks

    rank = int(os.environ.get("RANK", "0"))
    predictions = resumable_chunks(parts, len(samples), EVAL_CHUNK, lambda a, b: run(samples[a:b]).predictions,
                                   write=rank == 0)
    return EvalResult(summarize(predictions, config.eval.ks), predictions)


# ---------------------------------------------------------------- ICL runs
def start_icl_run(out: Path, data: str | Path, *, model: str, shots: int, seed: int, config: Config) -> Path:
    """Create the run directory of a guidance-only (ICL) baseline: the untuned `model` with `shots`
    demonstrations; call inside `process_group()` (rank 0 writes, every rank waits)."""
    from softrec.config import as_prepared
    from softrec.data.dataset import PreparedDataset
    from softrec.runs import RunDir

    dataset = PreparedDataset.load(data)
    if _rank() == 0:
        with RunDir(out) as run:
            run.update_info(base_model=model, method="icl", shots=shots, seed=seed,
                            dataset=str(Path(data).resolve()), dataset_key=dataset.checksum,
                            template=config.model.template)
            run.save_config(as_prepared(config, dataset), inputs={"dataset": dataset.checksum})
    _barrier()
    return out


# ---------------------------------------------------------------- results
def _write_results(run_dir: Path, name: str, key: str, result: Any, settings: dict[str, Any],
                   inputs: dict[str, Any], *, publish: bool = True) -> Path:
    from softrec.evaluation.evaluate import mean_decode_steps
    from softrec.runs import write_jsonl

    folder = Path("eval") / name
    payload = {**result.metrics, "eval": settings, "decoded_in": settings["decoded_in"]}
    steps = mean_decode_steps(result.predictions)
    if steps is not None:  # what the time plan's typical new tokens are checked against
        payload["decode_steps"] = round(steps, 2)
    _store(run_dir, folder, key, payload, lambda path: write_jsonl(path, result.predictions), {"inputs": inputs},
           publish=publish)
    return run_dir / folder


def _store(run_dir: Path, folder: Path, key: str, payload: dict[str, Any], write_predictions: Callable[[Path], None],
           record: dict[str, Any], *, publish: bool = True) -> None:
    """metrics.json (`payload`) and predictions.jsonl into RUN_DIR/`folder`, recorded under `key` with
    `record`, then (`publish`) published as the run's latest."""
    from softrec.runs import RunDir, atomic_write_json

    with RunDir(run_dir) as run:
        atomic_write_json(run.path / folder / "metrics.json", payload)
        write_predictions(run.path / folder / "predictions.jsonl")
        run.record_many({str(folder / f): record for f in LATEST}, key)
        if publish:
            _publish_latest(run, folder, key)


def _decoded_in(settings: dict[str, Any]) -> str | None:
    """The dtype eval.dtype resolved to here ("auto" is bf16 on AMX CPUs and GPUs, fp32 elsewhere), so
    metrics.json says which one produced its numbers."""
    from softrec.inference.generate import decode_dtype
    from softrec.models.registry import default_device

    if is_classic(settings.get("method")):
        return None
    return str(decode_dtype(settings["dtype"], default_device())).removeprefix("torch.")


def _publish_latest(run: Any, folder: Path, key: str) -> None:
    """Copy eval/<name>/ to the run's top level; both copies are recorded in one manifest write
    (after both are written), so a kill between them leaves a pair `compare` refuses."""
    from softrec.runs import atomic_write_bytes

    for file in LATEST:
        atomic_write_bytes(run.path / file, (run.path / folder / file).read_bytes())
    inputs = run.record_inputs(str(folder / "predictions.jsonl"))
    run.record_many({f: {"source": str(folder / f), "inputs": inputs} for f in LATEST}, key)


def format_metrics(metrics: dict[str, Any]) -> str:
    shown = [k for k in ("HR@1", "HR@10", "HR@50", "NDCG@10", "NDCG@50", "validity") if k in metrics]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in shown) + f"  n={metrics.get('n')}"


# ---------------------------------------------------------------- a sibling's evaluation
def tensors_fingerprint(run_dir: Path) -> str | None:
    """The trained tensors alone (every *.safetensors under adapter/ or model/, with the weights' config
    read as data): siblings whose best epoch is the same shared epoch 1 (`softrec train --fork-from`)
    have the same tensors but different model cards, so `path_sha256` of the folder tells them apart."""
    from softrec.runs import content_key, file_sha256

    for name in ("adapter", "model"):
        folder = run_dir / name
        if folder.is_dir():
            tensors = {str(f.relative_to(folder)): file_sha256(f) for f in sorted(folder.rglob("*.safetensors"))}
            configs = {}
            for config in ("adapter_config.json", "config.json"):
                if (folder / config).is_file():  # lists sorted: peft writes target_modules in set order
                    data = json.loads((folder / config).read_text(encoding="utf-8"))
                    configs[config] = {k: sorted(v, key=str) if isinstance(v, list) else v for k, v in data.items()}
            return content_key(name, tensors, configs) if tensors else None
    return None


def _sibling_result(sibling: Path, run_dir: Path, tensors: str, folder: Path, settings: dict[str, Any]) -> bool:
    """True when SIBLING holds a valid evaluation at `folder` with these settings (its own method
    aside) of the very tensors this run has (`tensors`): then it is this run's result too, to the byte."""
    if sibling.resolve() == run_dir.resolve():  # evaluate_run checked that each sibling is a run
        return False
    from softrec.runs import RunDir, content_key

    info = run_info(sibling)
    if is_classic(info.get("method")) or info.get("method") == "icl" or tensors != tensors_fingerprint(sibling):
        return False
    try:
        weights = _weights_fingerprint(sibling, info)
    except UserError:  # its weights are not its own any more: nothing of it is reused
        return False
    key = content_key({**settings, "method": info.get("method")}, weights, info.get("shots"))
    return all(RunDir(sibling).valid(str(folder / f), key) for f in LATEST)


def _reusable_sibling(reuse_from: Sequence[str | Path], run_dir: Path, folder: Path,
                      settings: dict[str, Any]) -> Path | None:
    """The first of `reuse_from` whose evaluation at `folder` is this run's (`_sibling_result`)."""
    if not reuse_from or not (tensors := tensors_fingerprint(run_dir)):
        return None
    return next((Path(s) for s in reuse_from if _sibling_result(Path(s), run_dir, tensors, folder, settings)), None)


def _copy_sibling(sibling: Path, run_dir: Path, folder: Path, key: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """SIBLING's evaluation at `folder` stored as this run's (marked `copied_from`); its metrics."""
    from softrec.runs import atomic_write_bytes

    source = str(sibling.resolve())
    metrics = {**json.loads((sibling / folder / "metrics.json").read_text(encoding="utf-8")), "copied_from": source}
    predictions = (sibling / folder / "predictions.jsonl").read_bytes()
    _store(run_dir, folder, key, metrics, lambda path: atomic_write_bytes(path, predictions),
           {"inputs": inputs, "copied_from": source})
    return metrics


# ---------------------------------------------------------------- the stage
def evaluate_run(run_dir: str | Path, config: Config, *, data: str | Path | None = None, split: str = "test",
                 limit: int | None = None, force: bool = False, progress: bool = True, preflight: bool = True,
                 reuse_from: Sequence[str | Path] = (), epoch: int | None = None,
                 say: Callable[[str], None] = print) -> Path:
    """Evaluate RUN_DIR on `split` of `data` (default: the run's dataset) with `config.eval` (see the
    module docstring); returns RUN_DIR/eval/<name>. `config` is usually `run_config(run_dir, ...)`:
    the run's own settings with the caller's changes. `reuse_from`: runs whose evaluation with these
    settings is copied, not recomputed, when their trained tensors are this run's (SOFT siblings that
    kept their shared epoch 1); unless `force`. `epoch`: the weights after that epoch
    (RUN_DIR/epochs/epoch-N) instead of the run's best, into eval/<name>-epochN, not published as the
    run's latest. Rank 0 reports through `say`."""
    from softrec.data.prompts import prompt_fingerprint
    from softrec.runs import RunDir, content_key

    run_dir = Path(run_dir)
    for sibling in map(Path, reuse_from):  # a mistyped path would silently evaluate for 15 minutes
        if not (sibling / "run.json").is_file():
            raise UserError(f"--reuse-from {sibling}: not a softrec run directory (no run.json)")
    with process_group() as (rank, _world):
        info = run_info(run_dir)
        dataset = run_dataset(data, info)
        samples = dataset.split(split)[:limit] if limit else dataset.split(split)
        name = _name_for(run_dir, config, split, limit, epoch)
        settings = {**config.eval.model_dump(mode="json"), "split": split, "limit": limit,
                    "dataset": str(dataset.path), "dataset_key": dataset.checksum,
                    "method": info.get("method"), "base_model": info.get("base_model"),
                    "prompt": prompt_fingerprint(config.model.template)}
        # the dtype `auto` resolves to on this machine is part of the key: a result (or a finished
        # chunk) decoded in bf16 on an AMX CPU is not reused by a rerun that decodes in fp32 elsewhere
        settings["decoded_in"] = _decoded_in(settings)
        epoch_dir = None
        if epoch is None:
            weights = _weights_fingerprint(run_dir, info)
        else:  # that epoch's weights, checked against the manifest (load_run_model checks the best ones)
            from softrec.runs import checked_epoch_weights, path_sha256

            epoch_dir = checked_epoch_weights(run_dir, epoch, f"retrain {run_dir}")
            weights = path_sha256(epoch_dir)
        key = content_key(settings, weights, info.get("shots"))
        has_weights = any((run_dir / n).exists() for n in RunDir.WEIGHTS)  # icl: the untuned base
        inputs = {"weights": weights if has_weights else None, "dataset": dataset.checksum,
                  "decoding": content_key(settings)}
        folder = Path("eval") / name
        reuse = not force and all(RunDir(run_dir).valid(str(folder / f), key) for f in LATEST)
        if reuse:
            if rank == 0:
                if epoch is None:
                    with RunDir(run_dir) as run:
                        _publish_latest(run, folder, key)
                metrics = json.loads((run_dir / folder / "metrics.json").read_text())
                say(f"up to date (use --force to recompute): {run_dir / folder}")
                say(format_metrics(metrics))
            return run_dir / folder
        sibling = None if force or epoch is not None else _reusable_sibling(reuse_from, run_dir, folder, settings)
        if sibling is not None:
            if rank == 0:
                metrics = _copy_sibling(sibling, run_dir, folder, key, inputs)
                say(f"the same tensors as {sibling}, evaluated with the same settings: its result copied")
                say(format_metrics(metrics))
            _barrier()
            return run_dir / folder
        if rank == 0:  # a read-only run directory fails here, not after the evaluation
            from softrec.runs import probe_writable

            probe_writable(run_dir / "eval")
        if not is_classic(info.get("method")):
            from softrec.preflight import preflight_generation

            preflight_generation(config, dataset, len(samples), stage="evaluate", skip=not preflight,
                                 model=info.get("base_model"))
        parts = run_dir / "eval" / f"{name}.parts"
        result = rank_run(run_dir, info, dataset, samples, config, progress=progress, parts=parts / key,
                          weights=epoch_dir)
        if rank == 0:
            where = _write_results(run_dir, name, key, result, settings, inputs, publish=epoch is None)
            import shutil

            shutil.rmtree(parts, ignore_errors=True)  # after the result is written, never before
            say(format_metrics(result.metrics))
            say(f"wrote {where / 'metrics.json'} and {where / 'predictions.jsonl'}")
            if epoch is None:
                say(f"latest copied to {run_dir / 'metrics.json'} and {run_dir / 'predictions.jsonl'}")
        _barrier()
    return run_dir / folder
