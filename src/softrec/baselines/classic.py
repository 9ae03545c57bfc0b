"""Training, saving and scoring for the classic sequential recommenders (SASRec, GRU4Rec).

They learn from every window of the training pool (`train_full`): with classic.train_positions
"all" (default) the users' sequences are rebuilt from the windows and every position predicts its
successor once per epoch (the SASRec paper's objective); with "last" each window's history predicts
only its target (RecBole's; ~context times more compute per epoch). The loss is a softmax over the
full catalogue (or BPR with one sampled negative); training stops early on the `valid` split's
full-ranking metric (classic.valid_metric) and keeps the best epoch. The model never reads more
history than the training windows hold, so train and test contexts match.

Run directory: run.json (method, dataset, dataset_key, base_model null, best_epoch), config.yaml,
classic.safetensors (best weights), classic.json (hyperparameters), history.json (per epoch),
checkpoints/classic_last.pt (for --resume). `load_ranker(run_dir)` gives samples -> scores
[n, n_items]; `rank_from_scores` turns scores into a full ranking with ties broken by item id;
`item_embeddings(run_dir)` gives the trained item table (LLaRA's frozen 64-d item vectors).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from softrec.config import ClassicConfig, Config
from softrec.data.dataset import PreparedDataset, Sample
from softrec.errors import DataFormatError, UserError
from softrec.methods import CLASSIC_METHODS
from softrec.metrics import aggregate
from softrec.runs import RunDir, atomic_write_bytes, atomic_write_json, content_key

WEIGHTS = "classic.safetensors"
HPARAMS = "classic.json"
HISTORY = "history.json"
CHECKPOINT = "checkpoints/classic_last.pt"


# ---------------------------------------------------------------- models and inputs
def build_model(method: str, n_items: int, settings: ClassicConfig) -> nn.Module:
    from softrec.baselines.gru4rec import GRU4Rec
    from softrec.baselines.sasrec import SASRec

    classes = {"sasrec": SASRec, "gru4rec": GRU4Rec}  # one model class per classic method
    if method not in classes:
        raise UserError(f"train.method: '{method}' is not a classic recommender (expected {' or '.join(CLASSIC_METHODS)})")
    return classes[method](
        n_items, hidden=settings.hidden, layers=settings.layers, heads=settings.heads,
        inner=settings.inner, dropout=settings.dropout, max_len=settings.max_len,
    )


def encode_histories(samples: Sequence[Sample], max_len: int) -> torch.Tensor:
    """Left-padded internal ids [n, L]: the last `max_len` history items, item i -> i + 1, 0 = pad."""
    width = max(1, min(max_len, max((len(s.history) for s in samples), default=1)))
    out = torch.zeros(len(samples), width, dtype=torch.long)
    for row, sample in enumerate(samples):
        kept = sample.history[-width:]
        if kept:
            out[row, width - len(kept):] = torch.tensor(kept, dtype=torch.long) + 1
    return out


def user_chains(samples: Sequence[Sample]) -> list[list[int]]:
    """Rebuild each user's item sequence from their windows (in target-time order): a window whose
    history is the tail of the user's current chain extends it by its target, any other window
    starts a new chain (history + target). Sliding and growing windows both rebuild the full
    sequence; windows that do not line up are kept as they are, so nothing is lost."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].user_id, samples[i].timestamp or 0.0, i))
    chains: list[list[int]] = []
    current: dict[str, list[int]] = {}
    for index in order:
        sample = samples[index]
        chain = current.get(sample.user_id)
        history = list(sample.history)
        if chain is not None and history and chain[-len(history):] == history:
            chain.append(sample.target)
        else:
            chain = [*history, sample.target]
            chains.append(chain)
            current[sample.user_id] = chain
    return chains


def chain_pieces(chain: Sequence[int], context: int) -> list[tuple[list[int], list[bool]]]:
    """Cut a chain into (items, labelled) pieces of at most context + 1 items, overlapping by about
    half, so every transition is labelled exactly once and (after the first piece) sees at least
    half the context. `labelled[j]` says whether piece item j + 1 is a training target."""
    width, stride = context + 1, max(1, (context + 1) // 2)
    pieces, end, covered = [], min(len(chain), width), 0
    while True:
        start = max(0, end - width)
        pieces.append((list(chain[start:end]), [i > covered for i in range(start + 1, end)]))
        covered = end - 1
        if end == len(chain):
            return pieces
        end = min(len(chain), end + stride)


def encode_training(
    samples: Sequence[Sample], context: int, positions: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training inputs [n, L] (left-padded internal ids) and labels [n, L] (0-based next item ids,
    -100 = no loss), L <= context.

    "all" (SASRec's objective): every position of the users' sequences, rebuilt from the windows,
    predicts its successor; each transition is labelled once per epoch (`chain_pieces`), which is
    ~context times cheaper than feeding every overlapping window. "last" (RecBole's objective): one
    row per window, its history predicting only its target.
    """
    rows: list[tuple[list[int], list[bool]]] = []
    if positions == "all":
        for chain in user_chains(samples):
            rows.extend(chain_pieces(chain, context))
    else:
        for sample in samples:
            seq = [*sample.history[-context:], sample.target] if sample.history else []
            rows.append((seq, [False] * (len(seq) - 2) + [True]))
    rows = [(items, labelled) for items, labelled in rows if len(items) >= 2]
    width = max((len(items) - 1 for items, _ in rows), default=1)
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (items, labelled) in enumerate(rows):
        seq = torch.tensor(items, dtype=torch.long)
        offset = width - len(items) + 1
        inputs[row, offset:] = seq[:-1] + 1
        labels[row, offset:] = torch.where(torch.tensor(labelled), seq[1:], -100)
    return inputs, labels


def _trim(seqs: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row (shorter batches run faster)."""
    nonpad = (seqs > 0).any(0).nonzero()
    start = int(nonpad[0]) if len(nonpad) else seqs.shape[1] - 1
    return tuple(t[:, start:] for t in (seqs, *others))


def score(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Scores over the real items [B, n_items] (the padding row of the table is never a candidate)."""
    (seqs,) = _trim(seqs)
    return model(seqs)[:, -1] @ model.item_emb.weight[1:].T


def _check_ids(samples: Sequence[Sample], n_items: int, where: str, *, targets: bool = True) -> None:
    for sample in samples:
        items = (*sample.history, sample.target) if targets else sample.history
        bad = [i for i in items if not 0 <= i < n_items]
        if bad:
            raise DataFormatError(
                where, f"sample {sample.sample_id}: item id {bad[0]} outside the catalogue 0..{n_items - 1}"
            )


# ---------------------------------------------------------------- ranking
def rank_from_scores(
    scores: torch.Tensor,
    targets: Sequence[int] | None = None,
    top_n: int = 50,
    *,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], list[int] | None]:
    """Full ranking from scores [n, n_items]: higher score first, ties broken by the lower item id.

    Returns the top `top_n` item ids per row and, when `targets` is given, each target's 0-based rank
    in the full ranking (every item is ranked, so a rank always exists). `exclude` (per row, item
    ids, e.g. the history) pushes those items below every other item.
    """
    scores = scores.detach().float().clone()
    if exclude is not None:
        for row, items in enumerate(exclude):
            if items:
                scores[row, list(items)] = float("-inf")
    # A stable descending sort keeps equal scores in ascending id order.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked = order[:, :top_n].tolist()
    if targets is None:
        return ranked, None
    target_t = torch.as_tensor(list(targets), dtype=torch.long).unsqueeze(1)
    target_scores = scores.gather(1, target_t)
    ids = torch.arange(scores.shape[1]).unsqueeze(0)
    ahead = (scores > target_scores) | ((scores == target_scores) & (ids < target_t))
    return ranked, ahead.sum(1).tolist()


@torch.no_grad()
def score_samples(model: nn.Module, samples: Sequence[Sample], max_len: int, batch_size: int = 512) -> torch.Tensor:
    was_training = model.training
    model.eval()
    if not samples:
        return torch.zeros(0, model.item_emb.num_embeddings - 1)
    seqs = encode_histories(samples, max_len)
    out = torch.cat([score(model, seqs[i:i + batch_size]) for i in range(0, len(samples), batch_size)])
    model.train(was_training)
    return out


def evaluate_ranks(model: nn.Module, samples: Sequence[Sample], max_len: int, ks: Sequence[int]) -> dict[str, float]:
    scores = score_samples(model, samples, max_len)
    _, ranks = rank_from_scores(scores, [s.target for s in samples], top_n=1)
    return aggregate(ranks, ks)


# ---------------------------------------------------------------- training
def _loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    inputs, labels = _trim(inputs, labels)
    keep = labels >= 0
    hidden, labels = model(inputs)[keep], labels[keep]
    logits = hidden @ model.item_emb.weight[1:].T
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    negatives = torch.randint(0, logits.shape[1], labels.shape)
    negatives = torch.where(negatives == labels, (negatives + 1) % logits.shape[1], negatives)
    positive = logits.gather(1, labels.unsqueeze(1))
    negative = logits.gather(1, negatives.unsqueeze(1))
    return -F.logsigmoid(positive - negative).mean()


def _train_epoch(model, optimizer, inputs, labels, settings: ClassicConfig, epoch: int) -> float:
    model.train()
    # Shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(settings.seed + epoch))
    total, batches = 0.0, 0
    for start in range(0, len(order), settings.batch_size):
        index = order[start:start + settings.batch_size]
        loss = _loss(model, inputs[index], labels[index], settings.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        batches += 1
    return total / max(batches, 1)


def _validate(model, valid: Sequence[Sample], context: int, ks: Sequence[int]) -> dict[str, float]:
    return evaluate_ranks(model, valid, context, ks)


def _state_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _weights_bytes(model: nn.Module) -> bytes:
    return save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()})


@dataclass
class _Fit:
    """Everything one training run needs between epochs (kept together so each step stays short)."""

    run: RunDir
    key: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    labels: torch.Tensor
    valid: Sequence[Sample]
    context: int
    ks: list[int]
    settings: ClassicConfig
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "best_score": float("-inf"), "best_epoch": None, "bad_epochs": 0, "history": []})

    def epoch(self, epoch: int) -> float:
        """Train one epoch, validate, keep the best weights, checkpoint; returns the valid metric."""
        started = time.perf_counter()
        loss = _train_epoch(self.model, self.optimizer, self.inputs, self.labels, self.settings, epoch)
        metrics = _validate(self.model, self.valid, self.context, self.ks)
        value = metrics[self.settings.valid_metric]
        state = self.state
        state["history"].append({"epoch": epoch + 1, "train_loss": loss, "valid": metrics,
                                 "seconds": round(time.perf_counter() - started, 3)})
        state["epoch"] = epoch + 1
        if value > state["best_score"]:
            state.update(best_score=value, best_epoch=epoch + 1, bad_epochs=0)
            atomic_write_bytes(self.run.path / WEIGHTS, _weights_bytes(self.model))
        else:
            state["bad_epochs"] += 1
        atomic_write_json(self.run.path / HISTORY, state["history"])
        atomic_write_bytes(self.run.path / CHECKPOINT, _state_bytes({
            **state, "key": self.key, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}))
        return value

    @property
    def stopped(self) -> bool:
        return self.state["bad_epochs"] >= self.settings.patience


def train_classic(
    config: Config, dataset: PreparedDataset, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train config.train.method (sasrec | gru4rec) on dataset's train_full; best epoch kept in `out`.

    A finished run with the same settings and data is reused, not retrained; `resume=True` continues
    an interrupted run from its last epoch checkpoint.
    """
    method, settings = config.train.method, config.classic
    if method not in CLASSIC_METHODS:
        raise UserError(f"train.method: '{method}' is not a classic recommender (expected {' or '.join(CLASSIC_METHODS)})")
    n_items = len(dataset.catalogue)
    train, valid = dataset.split("train_full"), dataset.split("valid")
    if not train or not valid:
        raise UserError(f"{dataset.path}: train_full and valid must not be empty to train {method}")
    _check_ids(train, n_items, str(dataset.path / "train_full.jsonl"))
    _check_ids(valid, n_items, str(dataset.path / "valid.jsonl"))
    key = content_key(method, settings.model_dump(mode="json"), dataset.checksum)

    with RunDir(out) as run:
        if run.valid(WEIGHTS, key) and run.valid(HISTORY, key):
            return _summary(run, method, reused=True)
        run.update_info(method=method, dataset=str(dataset.path), dataset_key=dataset.checksum, base_model=None)
        from softrec.config import as_prepared

        run.save_config(as_prepared(config, dataset), inputs={"dataset": dataset.checksum})
        # The model never reads more history than the training windows hold (train = test contexts).
        context = max(1, min(settings.max_len, max(len(s.history) for s in train)))
        atomic_write_json(run.path / HPARAMS, {"method": method, "n_items": n_items, "context": context,
                                               "dataset_key": dataset.checksum,
                                               "settings": settings.model_dump(mode="json")})
        torch.manual_seed(settings.seed)
        model = build_model(method, n_items, settings)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        fit = _Fit(run, key, model, optimizer, *encode_training(train, context, settings.train_positions),
                   valid, context, sorted({*config.eval.ks, int(settings.valid_metric.split("@")[1])}), settings)
        if resume and (run.path / CHECKPOINT).exists():
            fit.state = _restore(run.path / CHECKPOINT, key, model, optimizer)

        # An interrupted run that had already stopped early has nothing left to train.
        bar = tqdm(range(fit.state["epoch"], fit.state["epoch"] if fit.stopped else settings.epochs),
                   desc=method, unit="epoch", initial=fit.state["epoch"], total=settings.epochs,
                   disable=not progress)
        for epoch in bar:
            value = fit.epoch(epoch)
            bar.set_postfix(loss=f"{fit.state['history'][-1]['train_loss']:.4f}",
                            **{settings.valid_metric: f"{value:.4f}"},
                            best=f"{fit.state['best_score']:.4f}@{fit.state['best_epoch']}")
            if fit.stopped:
                break
        bar.close()

        state = fit.state
        run.update_info(best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                        best_valid=_best_record(state["history"], state["best_epoch"])["valid"])
        for name in (WEIGHTS, HPARAMS, HISTORY):
            run.record(name, key)
        return _summary(run, method, reused=False)


def _restore(checkpoint: Path, key: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    # weights_only: tensors, numbers, strings and containers only. A checkpoint is a file in a
    # directory anyone may hand us; a full unpickle would run whatever code it names.
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle, a truncated zip, a bad header
        why = "holds objects other than tensors and numbers" if "weights_only" in str(exc) else "unreadable"
        raise UserError(f"{checkpoint}: {why}; not loaded. Rerun without --resume (or another --out)") from None
    if not isinstance(saved, dict) or saved.get("key") != key:
        raise UserError(
            f"{checkpoint}: made with other settings or data; rerun without --resume (or another --out)"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return {k: saved[k] for k in ("epoch", "best_score", "best_epoch", "bad_epochs", "history")}


def _best_record(history: list[dict], best_epoch: int | None) -> dict[str, Any]:
    return next((h for h in history if h["epoch"] == best_epoch), {"valid": {}})


def _summary(run: RunDir, method: str, *, reused: bool) -> dict[str, Any]:
    history = json.loads((run.path / HISTORY).read_text(encoding="utf-8"))
    info = run.info()
    return {
        "method": method, "run_dir": str(run.path), "reused": reused,
        "best_epoch": info.get("best_epoch"), "epochs_run": len(history),
        "valid": _best_record(history, info.get("best_epoch"))["valid"],
    }


# ---------------------------------------------------------------- loading
def load_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The best-epoch model of a classic run (eval mode) and its hyperparameters."""
    run_dir = Path(run_dir)
    weights, hparams_path = run_dir / WEIGHTS, run_dir / HPARAMS
    if not weights.exists() or not hparams_path.exists():
        raise UserError(f"{run_dir}: not a trained SASRec/GRU4Rec run (no {WEIGHTS} or {HPARAMS})")
    for name in (WEIGHTS, HPARAMS):  # recorded files whose bytes changed are never loaded
        RunDir(run_dir).check(name, f"retrain the run (softrec train ... --out {run_dir})")
    from softrec.runs import read_json_object

    hparams = read_json_object(hparams_path, f"retrain the run (softrec train ... --out {run_dir})")
    settings = ClassicConfig.model_validate(hparams["settings"])
    model = build_model(hparams["method"], hparams["n_items"], settings)
    model.load_state_dict(load_safetensors(weights.read_bytes()))
    return model.eval(), hparams


def load_ranker(run_dir: str | Path) -> Callable[[Sequence[Sample]], torch.Tensor]:
    """samples -> scores [n, n_items] of the run's best model (deterministic: eval mode)."""
    model, hparams = load_model(run_dir)
    n_items, context = hparams["n_items"], hparams["context"]

    def ranker(samples: Sequence[Sample]) -> torch.Tensor:
        _check_ids(samples, n_items, f"{run_dir} (samples given to its ranker)", targets=False)
        return score_samples(model, samples, context)

    return ranker


def item_embeddings(run_dir: str | Path) -> torch.Tensor:
    """The trained item embedding table [n_items, hidden] (row i = item i), e.g. for LLaRA."""
    model, _ = load_model(run_dir)
    return model.item_emb.weight[1:].detach().clone()
