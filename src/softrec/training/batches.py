"""Training batches: tokenization, response-only targets, length grouping, both SOFT targets.

A sample is encoded once as three token lists: the prompt (`build_prompt`), the real response
(`response_text(title)` + the end token generation stops on) and, for SOFT, the self-distilled
response (its raw text + the end token). Too-long samples lose their OLDEST history titles first, so
the response (and the most recent history) is always kept.

The collator lays a batch out for the current SOFT weight lambda (`lambda_fn`: the trainer's
curriculum, which the loss reads too; lambda is constant within an epoch):
- lambda == 0 (SFT) or 1 (distilled only): the usual row `prompt + response`, right-padded, with a 2D
  attention mask: the unused half costs nothing.
- 0 < lambda < 1: ONE packed row `prompt + real + distilled` per sample. The distilled tokens get
  positions that continue from the prompt and an attention mask that hides the real response from
  them, so each response sees exactly `prompt + itself`, as if it were alone, while the prompt is run
  once for both. Targets are shifted per response (see `loss.py`), so the first token of each
  response is predicted from the last prompt token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from softrec.data.dataset import PreparedDataset, Sample
from softrec.data.prompts import end_token_id, response_text, sample_prompt
from softrec.errors import UserError
from softrec.training.loss import IGNORE

__all__ = ["IGNORE", "Collator", "Encoded", "EncodedDataset", "LengthGroupedSampler", "encode_sample",
           "encode_samples", "end_token_id"]


@dataclass(frozen=True)
class Encoded:
    sample_id: str
    prompt_ids: list[int]
    real_ids: list[int]
    distilled_ids: list[int] | None = None

    @property
    def length(self) -> int:
        """Tokens this sample costs in a packed SOFT row (or a plain SFT row)."""
        return len(self.prompt_ids) + len(self.real_ids) + len(self.distilled_ids or ())


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    # Chat templates already write BOS; adding it again would double it.
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return tokenizer(prompt, add_special_tokens=add_special)["input_ids"]


def _response_ids(tokenizer: Any, text: str, end_id: int) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [end_id]


def encode_sample(
    sample: Sample,
    dataset: PreparedDataset,
    tokenizer: Any,
    *,
    template: str = "alpaca",
    max_length: int = 700,
    distilled_text: str | None = None,
) -> Encoded:
    end_id = end_token_id(tokenizer, template)
    real = _response_ids(tokenizer, response_text(dataset.titles[sample.target]), end_id)
    distilled = None if distilled_text is None else _response_ids(tokenizer, distilled_text, end_id)
    responses = max(len(real), len(distilled or ()))
    budget = max_length - responses  # prompt tokens allowed (positions count per response)
    for start in range(len(sample.history) + 1):  # drop the oldest titles until the prompt fits
        text = sample_prompt(dataset, sample, template, tokenizer, start=start)
        prompt = _prompt_ids(tokenizer, text)
        if len(prompt) <= budget:
            break
    if len(prompt) > budget:  # even an empty history is too long: keep the prompt's end
        keep = max(budget, 1)
        prompt = prompt[-keep:]
        real, distilled = real[: max_length - keep], None if distilled is None else distilled[: max_length - keep]
    return Encoded(sample.sample_id, prompt, real, distilled)


def encode_samples(
    samples: Sequence[Sample],
    dataset: PreparedDataset,
    tokenizer: Any,
    *,
    template: str = "alpaca",
    max_length: int = 700,
    distilled: dict[str, str] | None = None,
) -> list[Encoded]:
    if distilled is not None:
        missing = [s.sample_id for s in samples if s.sample_id not in distilled]
        if missing:
            raise UserError(
                f"self-distilled targets missing for {len(missing)} training samples "
                f"(first: {missing[0]}); rerun `softrec distill` for this dataset"
            )
    return [
        encode_sample(
            s, dataset, tokenizer, template=template, max_length=max_length,
            distilled_text=None if distilled is None else distilled[s.sample_id],
        )
        for s in samples
    ]


class EncodedDataset(Dataset):
    def __init__(self, encoded: Sequence[Encoded]):
        self.encoded = list(encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> Encoded:
        return self.encoded[index]

    @property
    def lengths(self) -> list[int]:
        return [e.length for e in self.encoded]

    @property
    def has_distilled(self) -> bool:
        return bool(self.encoded) and all(e.distilled_ids is not None for e in self.encoded)


# ---------------------------------------------------------------- collation
def _shifted(segment_start: int, tokens: list[int], before_first: int) -> list[tuple[int, int]]:
    """(position whose hidden state predicts it, token) for each response token."""
    sources = [before_first] + list(range(segment_start, segment_start + len(tokens) - 1))
    return list(zip(sources, tokens, strict=True))


class Collator:
    """Pads a list of `Encoded` into a batch for the current lambda (see the module docstring)."""

    def __init__(
        self,
        pad_id: int,
        lambda_fn: Callable[[], float] = lambda: 0.0,
        *,
        model_config: Any = None,
        pad_to_multiple_of: int = 8,
    ):
        self.pad_id = pad_id
        self.lambda_fn = lambda_fn
        self.model_config = model_config
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[Encoded]) -> dict[str, Any]:
        lam = float(self.lambda_fn())
        have_distilled = all(f.distilled_ids is not None for f in features)
        if lam > 0 and not have_distilled:
            raise ValueError(f"soft_lambda={lam} needs self-distilled targets, but the batch has none")
        use_real, use_distilled = lam < 1, lam > 0
        rows = [self._row(f, use_real, use_distilled) for f in features]
        width = max(len(r["ids"]) for r in rows)
        if self.pad_to_multiple_of > 1:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, Any] = {"input_ids": torch.full((len(rows), width), self.pad_id, dtype=torch.long)}
        for key in ("targets", "targets_distilled"):
            batch[key] = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for b, row in enumerate(rows):
            batch["input_ids"][b, : len(row["ids"])] = torch.tensor(row["ids"])
            for key in ("targets", "targets_distilled"):
                for source, token in row[key]:
                    batch[key][b, source] = token
        if use_real and use_distilled:
            batch["attention_mask"], batch["position_ids"] = self._packed_mask(rows, width)
        else:
            lengths = torch.tensor([len(r["ids"]) for r in rows])
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        if not use_real:
            batch["targets"] = None
        if not use_distilled:
            batch["targets_distilled"] = None
        batch["n_tokens"] = sum(len(r["ids"]) for r in rows)
        return batch

    @staticmethod
    def _row(f: Encoded, use_real: bool, use_distilled: bool) -> dict[str, Any]:
        p = len(f.prompt_ids)
        ids, segments, positions = list(f.prompt_ids), [0] * p, list(range(p))
        row: dict[str, Any] = {"targets": [], "targets_distilled": []}
        for key, tokens, used, seg in (
            ("targets", f.real_ids, use_real, 1),
            ("targets_distilled", f.distilled_ids, use_distilled, 2),
        ):
            if not used:
                continue
            row[key] = _shifted(len(ids), tokens, p - 1)
            ids += tokens
            segments += [seg] * len(tokens)
            positions += list(range(p, p + len(tokens)))
        row.update(ids=ids, segments=segments, positions=positions)
        return row

    def _packed_mask(self, rows: list[dict[str, Any]], width: int) -> tuple[Any, torch.Tensor]:
        """Bool mask [B, 1, L, L] (True = may attend) and position ids for packed SOFT rows."""
        seg = torch.full((len(rows), width), -1, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            seg[b, : len(row["ids"])] = torch.tensor(row["segments"])
            pos[b, : len(row["ids"])] = torch.tensor(row["positions"])
        q_seg, k_seg = seg[:, :, None], seg[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
        allowed = causal & (k_seg >= 0) & (q_seg >= 0) & ~((q_seg == 2) & (k_seg == 1))
        allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding queries: no fully masked row (NaN)
        return self._mask_for_model(allowed, pos), pos

    def _mask_for_model(self, allowed: torch.Tensor, pos: torch.Tensor) -> Any:
        """A custom 4D mask is passed through as-is by transformers; layers with a sliding window
        (Gemma 3: 512) get the window applied on positions, via the per-layer-type dict Gemma accepts."""
        config = self.model_config
        window = getattr(config, "sliding_window", None) if config is not None else None
        layer_types = set(getattr(config, "layer_types", None) or [])
        eager = getattr(config, "_attn_implementation", "sdpa") == "eager"

        def fmt(mask: torch.Tensor) -> torch.Tensor:
            mask = mask[:, None]
            if eager:  # eager attention adds the mask to the scores
                return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
            return mask

        if not window:
            return fmt(allowed)
        in_window = allowed & ((pos[:, :, None] - pos[:, None, :]) < window)
        if "sliding_attention" in layer_types:
            return {"full_attention": fmt(allowed), "sliding_attention": fmt(in_window)}
        return fmt(in_window)


# ---------------------------------------------------------------- length grouping
class LengthGroupedSampler(Sampler[int]):
    """Shuffled micro-batches of similar lengths (less padding), reproducible per (seed, epoch).

    Indices are shuffled, cut into mega-batches of `mega` micro-batches, sorted by length inside
    each, cut into micro-batches, and the micro-batches shuffled again. The order depends only on
    (seed, epoch), never on the global RNG, so a resumed run replays the interrupted epoch exactly.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, mega: int = 16):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.mega
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # The one short micro-batch (the last mega-batch's) goes last, so that every micro-batch the
        # DataLoader cuts is one of these groups.
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for b in shuffled + short for i in b])
