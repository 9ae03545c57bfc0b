"""Language-model loss computed only where labels exist.

With a 262k-token vocabulary the LM head dominates a CPU training step when it runs at every
position: a batch of 8 x 256 tokens needs an 8 x 256 x 262144 float tensor of logits, while only the
~20 response tokens per sample are ever scored. So the model runs with `logits_to_keep=1` (the head at
one position: negligible), the final hidden states are gathered at the labelled positions, and the head
(plus Gemma-2-style final logit soft-capping, when the config has it) runs only there. The whole
forward still goes through the model's own `forward`, so peft wrappers and DDP see a normal call.

Targets are given already SHIFTED: `targets[b, i]` is the token the hidden state at (b, i) must
predict, -100 elsewhere. That lets one packed row carry two responses to the same prompt (SOFT), each
continuing from the last prompt token (see `batches.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from softrec.models.wrappers import causal_lm_of

IGNORE = -100


def softcap_logits(logits: torch.Tensor, config: Any) -> torch.Tensor:
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "position_ids")
    return {k: batch[k] for k in keys if batch.get(k) is not None}


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32 (exact log-softmax even when the head ran in bf16)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)


def losses_at_labels(model: Any, batch: dict[str, Any], target_keys: list[str]) -> list[torch.Tensor]:
    """One forward; for each key in `target_keys`, the mean CE over its labelled positions."""
    out = model(**model_inputs(batch), logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # after the final norm (transformers ties it to last_hidden_state)
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    losses = []
    for key in target_keys:
        targets = batch[key]
        where = targets != IGNORE
        logits = softcap_logits(head(hidden[where]), lm.config)
        losses.append(_ce(logits, targets[where]))
    return losses


def losses_full_logits(model: Any, batch: dict[str, Any], target_keys: list[str]) -> list[torch.Tensor]:
    """Reference path: the head at every position (what a plain HF setup does). Same result."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    vocab = logits.shape[-1]
    return [_ce(logits.reshape(-1, vocab), batch[key].reshape(-1)) for key in target_keys]


def lm_losses(model: Any, batch: dict[str, Any], target_keys: list[str], *, fast: bool = True) -> list[torch.Tensor]:
    fn = losses_at_labels if fast else losses_full_logits
    return fn(model, batch, target_keys)


# ---------------------------------------------------------------- bf16 autocast
@contextlib.contextmanager
def autocast(enabled: bool, device_type: str = "cpu") -> Iterator[None]:
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield
