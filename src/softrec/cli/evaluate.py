"""`softrec evaluate`, `softrec compare` and `softrec recommend`.

`evaluate` works under `torchrun` (gloo on CPU): every rank evaluates its shard, rank 0 writes the
files and prints. Results go to RUN_DIR/eval/<split>-<grounding>[-limitN][-beamsN...]/ (see
`evaluation_name`: the suffixes name what differs from the full evaluation) and the latest evaluation is
copied to RUN_DIR/metrics.json and RUN_DIR/predictions.jsonl. A rerun with the same settings, data
and weights reuses the recorded result (manifest key) unless --force.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from softrec.cli.common import add_config_options, config_from_args
from softrec.config import Config
from softrec.errors import UserError

CLASSIC = ("sasrec", "gru4rec")
# LLM evaluations run in chunks of this many samples, each kept under eval/<name>.parts/ until the
# result is written, so a killed evaluation redoes only its unfinished chunk. A multiple of the
# generation batch size and of the world size keeps batches (and so results) as in one pass.
EVAL_CHUNK = 256


# ---------------------------------------------------------------- distributed
@contextlib.contextmanager
def _process_group() -> Iterator[tuple[int, int]]:
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


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


# ---------------------------------------------------------------- naming
def evaluation_name(split: str, grounding: str, *, limit: int | None = None, beams: int | None = None,
                    max_new_tokens: int | None = None, length_penalty: float | None = None,
                    exclude_history: bool = False) -> str:
    """The folder under RUN_DIR/eval/ of one evaluation. The full evaluation with the run's own
    decoding settings is `<split>-<grounding>` (what `softrec report` reads); anything else that changes
    its numbers (a --limit, other beams, ...) is in the name, so a quick rerun never overwrites it."""
    name = f"{split}-{grounding}"
    name += f"-limit{limit}" if limit else ""
    name += f"-beams{beams}" if beams is not None else ""
    name += f"-maxtok{max_new_tokens}" if max_new_tokens is not None else ""
    name += f"-lp{length_penalty:g}" if length_penalty is not None else ""
    return name + ("-exclhist" if exclude_history else "")


def _evaluation_name(args: argparse.Namespace, run_dir: Path, config: Config) -> str:
    """evaluation_name with the decoding settings that differ from the run's saved config.yaml."""
    from softrec.config import load_config

    ev = config.eval
    saved = ev  # a run without a readable config.yaml: nothing to differ from but the limit
    if (run_dir / "config.yaml").exists():
        with contextlib.suppress(UserError):
            saved = load_config(run_dir / "config.yaml").eval

    def changed(field: str) -> Any:
        return getattr(ev, field) if getattr(ev, field) != getattr(saved, field) else None

    return evaluation_name(args.split, ev.grounding, limit=args.limit, beams=changed("num_beams"),
                           max_new_tokens=changed("max_new_tokens"), length_penalty=changed("length_penalty"),
                           exclude_history=bool(changed("exclude_history")))


# ---------------------------------------------------------------- shared loading
def _run_info(run_dir: Path) -> dict[str, Any]:
    from softrec.runs import RunDir

    if not (run_dir / "run.json").is_file():
        raise UserError(f"{run_dir}: not a softrec run directory (no run.json)")
    return RunDir(run_dir).info()


def _run_config(args: argparse.Namespace, run_dir: Path | None, flags: dict[str, Any]) -> Config:
    """defaults < the run's saved config.yaml (or --config) < --set < dedicated flags."""
    if getattr(args, "config", None) is None and run_dir is not None and (run_dir / "config.yaml").exists():
        args.config = str(run_dir / "config.yaml")
    return config_from_args(args, flags)


def _dataset(path: str | None, info: dict[str, Any]) -> Any:
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


def _load_llm(run_dir: Path, info: dict[str, Any]) -> tuple[Any, Any, Any | None]:
    """(model, tokenizer, grounding_model); full fine-tuning needs the untuned base for grounding."""
    from softrec.models.registry import load_backbone, load_run_model

    if info.get("method") == "icl":
        model, tokenizer = load_backbone(info["base_model"])
        return model, tokenizer, None
    model, tokenizer = load_run_model(run_dir)
    base = load_backbone(info["base_model"])[0] if (run_dir / "model").is_dir() else None
    return model, tokenizer, base


def _prompt_fn(info: dict[str, Any], dataset: Any, template: str, tokenizer: Any) -> Callable | None:
    if info.get("method") != "icl":
        return None
    from softrec.baselines.icl import icl_prompt_fn

    return icl_prompt_fn(dataset, int(info.get("shots", 0)), seed=int(info.get("seed", 42)),
                         template=template, tokenizer=tokenizer)


def _weights_fingerprint(run_dir: Path, info: dict[str, Any]) -> str:
    from softrec.runs import path_sha256

    if info.get("method") not in (*CLASSIC, "icl"):
        from softrec.models.registry import check_run_weights

        check_run_weights(run_dir, info)  # before any work: deleted or foreign weights are refused
    for name in ("adapter", "model", "classic.safetensors"):  # classic: retraining changes results too
        if (run_dir / name).exists():
            return path_sha256(run_dir / name)
    return str(info.get("base_model"))


def _rank(run_dir: Path, info: dict[str, Any], dataset: Any, samples: Sequence[Any], config: Config,
          progress: bool, parts: Path | None = None) -> Any:
    """EvalResult for `samples`, dispatching on run.json's method; LLM runs resume from `parts`."""
    from softrec.evaluation.evaluate import EvalResult, evaluate_model, evaluate_scores, summarize

    if info.get("method") in CLASSIC:
        from softrec.baselines import load_ranker

        return evaluate_scores(load_ranker(run_dir)(samples), samples, config.eval)
    model, tokenizer, grounding_model = _load_llm(run_dir, info)
    template = info.get("template") or config.model.template

    def run(chunk: Sequence[Any]) -> Any:
        return evaluate_model(
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


# ---------------------------------------------------------------- evaluate
def _start_icl_run(args: argparse.Namespace, rank: int) -> Path:
    from softrec.data.dataset import PreparedDataset
    from softrec.runs import RunDir

    if not args.out or not args.data:
        raise UserError("--method icl needs --data PREPARED_DIR and --out RUN_DIR")
    dataset = PreparedDataset.load(args.data)
    run_dir = Path(args.out)
    if rank == 0:
        config = config_from_args(args, {"model.name": args.model})
        with RunDir(run_dir) as run:
            run.update_info(base_model=args.model, method="icl", shots=args.shots, seed=args.seed,
                            dataset=str(Path(args.data).resolve()), dataset_key=dataset.checksum,
                            template=config.model.template)
            from softrec.config import as_prepared

            run.save_config(as_prepared(config, dataset), inputs={"dataset": dataset.checksum})
    _barrier()
    return run_dir


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _eval_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "eval.grounding": args.grounding,
        "eval.num_beams": args.num_beams,
        "eval.max_new_tokens": args.max_new_tokens,
        "eval.length_penalty": args.length_penalty,
        "eval.batch_size": args.batch_size,
        "eval.exclude_history": True if args.exclude_history else None,
    }


def _write_results(run_dir: Path, name: str, key: str, result: Any, settings: dict[str, Any],
                   inputs: dict[str, Any]) -> Path:
    from softrec.runs import RunDir, atomic_write_json, write_jsonl

    with RunDir(run_dir) as run:
        folder = Path("eval") / name
        payload = {**result.metrics, "eval": settings}
        atomic_write_json(run.path / folder / "metrics.json", payload)
        write_jsonl(run.path / folder / "predictions.jsonl", result.predictions)
        run.record_many({str(folder / f): {"inputs": inputs} for f in LATEST}, key)
        _publish_latest(run, folder, key)
    return run_dir / folder


LATEST = ("metrics.json", "predictions.jsonl")


def _publish_latest(run: Any, folder: Path, key: str) -> None:
    """Copy eval/<name>/ to the run's top level; both copies are recorded in one manifest write
    (after both are written), so a kill between them leaves a pair `compare` refuses."""
    from softrec.runs import atomic_write_bytes

    for file in LATEST:
        atomic_write_bytes(run.path / file, (run.path / folder / file).read_bytes())
    inputs = run.record_inputs(str(folder / "predictions.jsonl"))
    run.record_many({f: {"source": str(folder / f), "inputs": inputs} for f in LATEST}, key)


def _format_metrics(metrics: dict[str, Any]) -> str:
    shown = [k for k in ("HR@1", "HR@10", "HR@50", "NDCG@10", "NDCG@50", "validity") if k in metrics]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in shown) + f"  n={metrics.get('n')}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from softrec.data.prompts import prompt_fingerprint
    from softrec.runs import RunDir, content_key

    with _process_group() as (rank, _world):
        if args.method == "icl":
            run_dir = _start_icl_run(args, rank)
        elif args.run:
            run_dir = Path(args.run)
        else:
            raise UserError("--run-dir RUN_DIR is required (or --method icl with --model/--data/--out)")
        info = _run_info(run_dir)
        config = _run_config(args, run_dir, _eval_flags(args))
        dataset = _dataset(args.data, info)
        samples = dataset.split(args.split)[: args.limit] if args.limit else dataset.split(args.split)
        name = _evaluation_name(args, run_dir, config)
        settings = {**config.eval.model_dump(mode="json"), "split": args.split, "limit": args.limit,
                    "dataset": str(dataset.path), "dataset_key": dataset.checksum,
                    "method": info.get("method"), "base_model": info.get("base_model"),
                    "prompt": prompt_fingerprint(config.model.template)}
        weights = _weights_fingerprint(run_dir, info)
        key = content_key(settings, weights, info.get("shots"))
        has_weights = any((run_dir / n).exists() for n in RunDir.WEIGHTS)  # icl: the untuned base
        inputs = {"weights": weights if has_weights else None, "dataset": dataset.checksum,
                  "decoding": content_key(settings)}
        folder = Path("eval") / name
        reuse = not args.force and all(
            RunDir(run_dir).valid(str(folder / f), key) for f in ("metrics.json", "predictions.jsonl")
        )
        if reuse:
            if rank == 0:
                with RunDir(run_dir) as run:
                    _publish_latest(run, folder, key)
                metrics = json.loads((run_dir / folder / "metrics.json").read_text())
                print(f"up to date (use --force to recompute): {run_dir / folder}")
                print(_format_metrics(metrics))
            return 0
        if rank == 0:  # a read-only run directory fails here, not after the evaluation
            from softrec.runs import probe_writable

            probe_writable(run_dir / "eval")
        if info.get("method") not in CLASSIC:
            from softrec.preflight import preflight_generation

            preflight_generation(config, dataset, len(samples), stage="evaluate", skip=args.no_preflight,
                                 model=args.model if args.method == "icl" else info.get("base_model"))
        parts = run_dir / "eval" / f"{name}.parts"
        result = _rank(run_dir, info, dataset, samples, config, progress=not args.quiet, parts=parts / key)
        if rank == 0:
            where = _write_results(run_dir, name, key, result, settings, inputs)
            import shutil

            shutil.rmtree(parts, ignore_errors=True)  # after the result is written, never before
            print(_format_metrics(result.metrics))
            print(f"wrote {where / 'metrics.json'} and {where / 'predictions.jsonl'}")
            print(f"latest copied to {run_dir / 'metrics.json'} and {run_dir / 'predictions.jsonl'}")
        _barrier()
    return 0


# ---------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from softrec.evaluation.compare import compare_predictions, format_table, load_predictions

    diffs = compare_predictions(args.a, args.b, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps([d.to_dict() for d in diffs], indent=2))
    else:
        print(format_table(diffs, args.a, args.b, len(load_predictions(args.a))))
    return 0


# ---------------------------------------------------------------- recommend
def resolve_items(entries: Sequence[str], titles: Sequence[str]) -> list[int]:
    """Titles (exact, then case-insensitive) or item ids -> ids; unknown -> UserError with close matches."""
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    for item_id, title in enumerate(titles):
        exact.setdefault(title, item_id)
        folded.setdefault(title.casefold(), item_id)
    ids = []
    for entry in entries:
        if entry in exact:
            ids.append(exact[entry])
        elif entry.casefold() in folded:
            ids.append(folded[entry.casefold()])
        elif entry.strip().isdigit() and int(entry) < len(titles):
            ids.append(int(entry))
        else:
            close = difflib.get_close_matches(entry, titles, n=3, cutoff=0.5)
            hint = ("; close matches: " + ", ".join(repr(c) for c in close)) if close else ""
            raise UserError(f"--history: {entry!r} is neither a catalogue title nor an item id{hint}")
    return ids


def cmd_recommend(args: argparse.Namespace) -> int:
    from softrec.data.dataset import Sample

    run_dir = Path(args.run)
    info = _run_info(run_dir)
    flags = {"eval.grounding": args.grounding, "eval.num_beams": args.num_beams,
             "eval.exclude_history": True if args.exclude_history else None}
    config = _run_config(args, run_dir, flags)
    dataset = _dataset(args.data, info)
    history = resolve_items(args.history, dataset.titles)
    sample = Sample("recommend", "cli", tuple(history), -1)
    config.eval.top_n = max(args.k, 1)
    prediction = _rank(run_dir, info, dataset, [sample], config, progress=False).predictions[0]
    items = [{"rank": r + 1, "item_id": i, "title": dataset.titles[i]}
             for r, i in enumerate(prediction["ranked"][: args.k])]
    if args.json:
        print(json.dumps({"history": history, "generated": prediction["generated"], "items": items},
                         indent=2, ensure_ascii=False))
        return 0
    if prediction["generated"]:
        print(f"generated: {prediction['generated']}")
    print(f"{'rank':>4}  {'item':>6}  title")
    for row in items:
        print(f"{row['rank']:>4}  {row['item_id']:>6}  {row['title']}")
    return 0


# ---------------------------------------------------------------- parsers
def _decoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grounding", choices=["l2", "trie", "minilm"],
                        help="l2 = BIGRec (reference); trie = constrained beams; minilm = sentence embeddings")
    parser.add_argument("--num-beams", type=int, help="beams (default eval.num_beams, 4)")
    parser.add_argument("--exclude-history", action="store_true",
                        help="drop the sample's history items from the ranking (off by default, as in the reference)")
    parser.add_argument("--data", metavar="PREPARED_DIR", help="prepared dataset (default: the run's)")


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("evaluate", help="full-ranking metrics of a run (HR@K, NDCG@K, validity)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --run-dir: torchrun's own parser rejects `--run` as an ambiguous prefix of its --run-path
    ev.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR",
                    help="trained run directory (--run is an alias; torchrun's parser needs --run-dir)")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to rank (default test)")
    _decoding_options(ev)
    ev.add_argument("--max-new-tokens", type=int, metavar="N", help="eval.max_new_tokens (reference 64)")
    ev.add_argument("--length-penalty", type=float, metavar="X", help="beam-search length penalty (eval.length_penalty, 1.0)")
    ev.add_argument("--batch-size", type=int, help="prompts per generate call")
    ev.add_argument("--limit", type=int, metavar="N", help="only the first N samples of the split")
    ev.add_argument("--force", action="store_true", help="recompute even if a valid result exists")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate and its refusal")
    ev.add_argument("--method", choices=["icl"], help="icl = guidance-only baseline with the untuned --model")
    ev.add_argument("--shots", type=int, default=0, help="ICL demonstrations from the train split")
    ev.add_argument("--seed", type=int, default=42, help="ICL demonstration draw")
    ev.add_argument("--model", default="gemma-3-270m", help="ICL backbone (registry name or HF dir)")
    ev.add_argument("--out", metavar="RUN_DIR", help="ICL run directory to create")
    add_config_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    cmp = subparsers.add_parser("compare", help="paired bootstrap of two evaluations' per-sample metrics")
    cmp.add_argument("a", metavar="RUN_OR_PREDICTIONS_A", help="baseline: a run directory or a predictions.jsonl")
    cmp.add_argument("b", metavar="RUN_OR_PREDICTIONS_B", help="the other evaluation, same split and samples")
    cmp.add_argument("--resamples", type=int, default=10_000, metavar="N", help="bootstrap resamples (10000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    cmp.add_argument("--json", action="store_true", help="machine-readable output")
    cmp.set_defaults(func=cmd_compare)

    rec = subparsers.add_parser("recommend", help="rank catalogue items for a history of titles or ids")
    rec.add_argument("--run-dir", "--run", dest="run", metavar="RUN_DIR", required=True,
                     help="trained run directory (--run is an alias)")
    rec.add_argument("--history", nargs="+", required=True, metavar="TITLE_OR_ID",
                     help="the user's items, oldest first: catalogue titles or item ids")
    rec.add_argument("-k", type=int, default=10, help="items to show")
    rec.add_argument("--json", action="store_true", help="machine-readable output")
    _decoding_options(rec)
    add_config_options(rec)
    rec.set_defaults(func=cmd_recommend)
