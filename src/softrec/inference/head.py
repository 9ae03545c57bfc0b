"""The LM head for beam search: exact log-probabilities of each row's best tokens, vocabulary by chunk.

Beam search needs, per row, the log-normaliser over the whole vocabulary and the few best tokens;
never the full row of logits. With Gemma's 262k-token vocabulary, materialising that row costs more
than the matmul that makes it: `linear` writes a [rows, 262144] tensor, then log-softmax and top-k
read it back in several passes, far outside the caches. Here the head runs over vocabulary chunks of
a few thousand tokens (`W_chunk @ h^T`, which a CPU computes ~1.7x faster than `h @ W^T` for a
tall head, and with `h^T` a transposed view ~2x faster again at the few rows that end a batch than
with a contiguous copy; measured in benchmarks/results/generation-*), and each cache-resident chunk updates a
running log-sum-exp and a running top-k. The result is the same log-probabilities up to float
rounding, as transformers computes them with `log_softmax` (any final logit soft-capping included).
No library offers this fused reduction for CPU beam search (vLLM/TGI fuse it on GPUs only).
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 4096


class ChunkedHead:
    """`model`'s output projection (weight, optional bias and soft-capping), applied chunk by chunk."""

    def __init__(self, model: Any, chunk: int = CHUNK):
        head = model.get_output_embeddings()
        self.weight = head.weight
        self.bias = getattr(head, "bias", None)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.cap = getattr(config, "final_logit_softcapping", None)
        self.chunk = chunk

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def _chunk_logits(self, hidden_t: torch.Tensor, start: int) -> torch.Tensor:
        """float32 logits [rows, chunk] of the vocabulary slice starting at `start`."""
        stop = min(start + self.chunk, self.vocab_size)
        logits = (self.weight[start:stop] @ hidden_t).t().float()
        if self.bias is not None:
            logits += self.bias[start:stop].float()
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits.contiguous()

    def top(self, hidden: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's n best log-probabilities and their token ids, best first: [rows, n] each."""
        hidden_t = hidden.to(self.weight.dtype).t()
        values, ids, maxima, sums = [], [], [], []
        for start in range(0, self.vocab_size, self.chunk):
            logits = self._chunk_logits(hidden_t, start)
            best, where = logits.topk(min(n, logits.shape[1]), dim=1)
            values.append(best)
            ids.append(where + start)
            peak = best[:, :1]
            maxima.append(peak)
            sums.append(logits.sub_(peak).exp_().sum(dim=1, keepdim=True))
        peak = torch.cat(maxima, dim=1)
        top = peak.amax(dim=1, keepdim=True)
        norm = top + (torch.cat(sums, dim=1) * (peak - top).exp()).sum(dim=1, keepdim=True).log()
        values_all, ids_all = torch.cat(values, dim=1), torch.cat(ids, dim=1)
        best, where = values_all.topk(n, dim=1)
        return best - norm, ids_all.gather(1, where)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-probabilities [rows, vocab] (constrained decoding gathers a few columns of them)."""
        hidden_t = hidden.to(self.weight.dtype).t().contiguous()
        out = torch.empty((hidden.shape[0], self.vocab_size), dtype=torch.float32, device=hidden.device)
        for start in range(0, self.vocab_size, self.chunk):
            logits = self._chunk_logits(hidden_t, start)
            out[:, start : start + logits.shape[1]] = logits
        return out - torch.logsumexp(out, dim=1, keepdim=True)
