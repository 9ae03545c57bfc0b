"""SOFT stage 2, self-distillation: the SFT model's own top-beam generation for every training input.

Generation, not training: it runs the inference engine over the trained samples (`data.subsets`).

The targets y'_i are the raw top-beam texts (reference, inference.py lines 104-105 and process.py
line 68: decoded without special tokens, neither grounded nor stripped), stored in
SFT_RUN_DIR/distilled.jsonl as {"sample_id", "target_text", "exact_title"}; the run's manifest records
their provenance (key over adapter checksum, decoding settings and data key; shares of exact titles
and of true next items, `distilled_shares`). Options beside the
reference (`config.DISTILL_MODES`): `quoted` cuts the top beam after its first closing quote (a
run-on '"A"\n"B"...' becomes '"A"'), `grounded` snaps each generation to its nearest catalogue title
(L2 grounding) and `sample` draws one sampled continuation instead of beam search.

The teacher is the run's best weights; to distil from another epoch or adapter, `softrec.runs.teacher_run`
first makes a teacher run directory holding a copy of it (distilled.jsonl then lands there).

Work is done in chunks, each written atomically under distilled.parts/: a killed run keeps the
finished chunks and redoes only the unfinished one.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from softrec.config import Config
from softrec.data.dataset import PreparedDataset, Sample
from softrec.data.prompts import (
    QUOTED_RULE,
    first_quoted,
    prompt_fingerprint,
    response_text,
    sample_prompt,
    strip_response,
)
from softrec.data.subsets import training_samples
from softrec.errors import UserError
from softrec.runs import RunDir, content_key, path_sha256, read_jsonl, resumable_chunks, write_jsonl

DISTILLED = "distilled.jsonl"
PARTS = "distilled.parts"
CHUNK = 32


def distill_key(run_dir: Path, dataset: PreparedDataset, config: Config) -> str:
    weights = run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model")
    if not weights.exists():
        raise UserError(f"{run_dir}: no trained adapter/ or model/ to distil from (train it first)")
    soft = config.soft
    mode = f"quoted:{QUOTED_RULE}" if soft.distill_mode == "quoted" else soft.distill_mode  # the rule's version
    return content_key(
        path_sha256(weights), dataset.checksum, config.model.template,
        mode, soft.distill_beams, soft.distill_max_new_tokens, config.train.seed,
        config.train.train_samples, config.data.seed,
        prompt_fingerprint(config.model.template), config.eval.response_rule, "raw-text-v2",
    )


def load_distilled(run_dir: str | Path, dataset: PreparedDataset | None = None) -> dict[str, str]:
    """sample_id -> self-distilled response text (used verbatim as the training response). With
    `dataset`: UserError when the targets were distilled from other data (a teacher of another
    dataset, or a restored run whose data was prepared differently here)."""
    path = Path(run_dir) / DISTILLED
    if not path.exists():
        raise UserError(f"{path}: no self-distilled targets; run `softrec distill --run {run_dir} --data DIR` first")
    rebuild = f"rebuild it with `softrec distill --run {run_dir} --data DIR`"
    RunDir(run_dir).check(DISTILLED, rebuild)
    RunDir(run_dir).check_inputs(DISTILLED, rebuild)  # made by the run's current weights, not earlier ones
    recorded = (RunDir(run_dir).manifest()["artefacts"].get(DISTILLED) or {}).get("dataset_key")
    if dataset is not None and recorded is not None and recorded != dataset.checksum:
        raise UserError(f"{path}: distilled from other data (dataset key {recorded}) than {dataset.path} "
                        f"({dataset.checksum}); distil this dataset, or train on the one the teacher saw")
    return {row["sample_id"]: row["target_text"] for row in read_jsonl(path)}


def distilled_shares(rows: list[dict[str, Any]], dataset: PreparedDataset, response_rule: str) -> dict[str, float]:
    """How good the teacher is on the prompts it distils: the share of its targets that are a catalogue
    title once stripped (`exact_title_share`) and that are the sample's own next item
    (`target_hit_share`: its top-1 hit rate there, the closest this single beam comes to HR@k)."""
    truth = {s.sample_id: dataset.titles[s.target] for s in dataset.split("train")}
    stripped = [strip_response(row["target_text"], response_rule) for row in rows]
    titles, n = set(dataset.titles), max(len(rows), 1)
    return {"exact_title_share": sum(t in titles for t in stripped) / n,
            "target_hit_share": sum(t == truth.get(row["sample_id"]) for t, row in zip(stripped, rows, strict=True)) / n}


def _generate_targets(
    model: Any, tokenizer: Any, samples: Sequence[Sample], dataset: PreparedDataset, config: Config,
    base_model: str | None = None,
) -> list[str]:
    """The top beam of every sample's prompt, as `soft.distill_mode` turns it into a target.
    `base_model` names the catalogue embedding in the disk cache (grounded mode): without it the
    catalogue is embedded again for every chunk."""
    from softrec.inference.generate import generate_beams

    titles = dataset.titles
    prompts = [sample_prompt(dataset, s, config.model.template, tokenizer) for s in samples]
    soft = config.soft
    if soft.distill_mode == "sample":
        return _sample(model, tokenizer, prompts, soft.distill_max_new_tokens, config.train.seed)
    beams = generate_beams(
        model, tokenizer, prompts, num_beams=soft.distill_beams,
        max_new_tokens=soft.distill_max_new_tokens, batch_size=config.eval.batch_size,
        dtype=config.eval.dtype, progress=True,
    )
    texts = [b[0] if b else "" for b in beams]
    if soft.distill_mode == "quoted":
        return [first_quoted(t) for t in texts]
    if soft.distill_mode == "grounded":
        from softrec.inference.grounding import catalogue_embeddings, embed_texts, rank_by_distance

        # the catalogue, its cache and the tie rule are evaluation's l2 grounding's
        catalogue = catalogue_embeddings(model, tokenizer, dataset, cache_key=base_model)
        emb = embed_texts(model, tokenizer, [strip_response(t, config.eval.response_rule) or " " for t in texts])
        nearest = rank_by_distance(emb, catalogue)[:, 0]
        texts = [response_text(titles[int(i)]) for i in nearest]
    return texts


def _sample(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    import torch

    torch.manual_seed(seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, top_p=0.9, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def distill(run_dir: str | Path, dataset: PreparedDataset, config: Config, *, progress: bool = True) -> Path:
    """Write RUN_DIR/distilled.jsonl (reused when its key still matches)."""
    from softrec.models.registry import load_run_model

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():  # checked before the lock, which would create run_dir
        raise UserError(f"{run_dir}: not a softrec run directory (no run.json); train an SFT run first")
    distill_key(run_dir, dataset, config)  # no weights: refused before anything is written
    with RunDir(run_dir) as run:
        key = distill_key(run_dir, dataset, config)
        if run.valid(DISTILLED, key):
            return run_dir / DISTILLED
        samples = training_samples(dataset, config)
        model, tokenizer = load_run_model(run_dir)
        base_model = run.info().get("base_model")
        titles = set(dataset.titles)
        bar = tqdm(total=len(samples), desc="distil", unit="prompt", disable=not progress)

        def compute(start: int, stop: int) -> list[dict]:
            chunk = samples[start:stop]
            texts = _generate_targets(model, tokenizer, chunk, dataset, config, base_model)
            bar.update(len(chunk))
            return [
                {"sample_id": s.sample_id, "target_text": t,
                 "exact_title": strip_response(t, config.eval.response_rule) in titles}
                for s, t in zip(chunk, texts, strict=True)
            ]

        rows = resumable_chunks(run_dir / PARTS / key, len(samples), CHUNK, compute)
        bar.close()
        write_jsonl(run_dir / DISTILLED, rows)
        run.record(DISTILLED, key, inputs={"weights": run.weights_sha(), "dataset": dataset.checksum},
                   n=len(rows), **distilled_shares(rows, dataset, config.eval.response_rule),
                   mode=config.soft.distill_mode, beams=config.soft.distill_beams,
                   max_new_tokens=config.soft.distill_max_new_tokens, dataset_key=dataset.checksum)
        shutil.rmtree(run_dir / PARTS, ignore_errors=True)
    return run_dir / DISTILLED
