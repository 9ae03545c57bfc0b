"""LLaRA's training entry: the frozen SASRec item table its projector reads (softrec.models.llara).

The table comes from a SASRec run on the same prepared data (config.model.llara_sasrec_run), or from
one trained (or reused) into RUN_DIR/sasrec: training a classic baseline is a training-layer job, so
it lives here rather than beside the model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from softrec.errors import UserError
from softrec.models import llara

log = logging.getLogger(__name__)

SASREC_DIR = "sasrec"


def sasrec_items(config: Any, dataset: Any, out: str | Path) -> tuple[torch.Tensor, Path]:
    """The frozen item table: from config.model.llara_sasrec_run, else a SASRec run trained (or
    reused) in RUN_DIR/sasrec on the same prepared data. Checks the run matches the dataset."""
    from softrec.baselines import item_embeddings, train_classic

    if config.model.llara_sasrec_run:
        run = Path(config.model.llara_sasrec_run)
    else:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would train into the same folder
            raise UserError("LLaRA under torchrun: train SASRec first (softrec train --method sasrec --data "
                            f"{dataset.path} --out DIR) and pass --sasrec-run DIR (model.llara_sasrec_run)")
        run = Path(out) / SASREC_DIR
        settings = config.model_copy(deep=True)
        settings.train.method = "sasrec"
        log.warning("LLaRA: training the SASRec item embeddings into %s", run)
        train_classic(settings, dataset, run, progress=False)
    info_path = run / "run.json"
    if not info_path.exists():
        raise UserError(f"model.llara_sasrec_run {run}: not a run directory (no run.json)")
    from softrec.runs import read_json_object

    info = read_json_object(info_path, "retrain the SASRec run")
    if info.get("method") != "sasrec":
        raise UserError(f"model.llara_sasrec_run {run}: method is {info.get('method')!r}, expected 'sasrec'")
    if info.get("dataset_key") != dataset.checksum:
        raise UserError(
            f"model.llara_sasrec_run {run}: trained on other data (dataset_key {info.get('dataset_key')}, "
            f"expected {dataset.checksum} of {dataset.path})"
        )
    items = item_embeddings(run)
    if items.shape[0] != len(dataset.catalogue):
        raise UserError(f"{run}: {items.shape[0]} item embeddings for a catalogue of {len(dataset.catalogue)}")
    return items, run


def attach_for_training(model: Any, tokenizer: Any, config: Any, dataset: Any, out: str | Path) -> tuple[Any, Any]:
    """`build_trainer`'s hook for config.model.backbone == 'llara' (a fresh, seeded MLP)."""
    items, _ = sasrec_items(config, dataset, out)
    return llara.attach(model, tokenizer, items)
