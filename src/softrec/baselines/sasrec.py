"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Learned positions counted from the first item of the sequence, pre-LayerNorm Transformer blocks,
and the item embedding table shared between input and scoring. Input ids are internal: 0 is
padding, item i is i + 1; sequences are left-padded. The output at position j represents the item
after position j, so one forward trains every position of a sequence (the paper's objective) and
the next item after a history is read at the last position. Positions count from the sequence
start (not back from its end) so that a sequence's outputs are exactly those of its prefixes.
"""

from __future__ import annotations

import torch
from torch import nn


class SASRec(nn.Module):
    def __init__(
        self, n_items: int, *, hidden: int, layers: int, heads: int, inner: int, dropout: float, max_len: int
    ):
        super().__init__()
        self.max_len = max_len
        self.heads = heads
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            hidden, heads, inner, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.apply(_init_weights)

    def attention_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """True = may not attend: future positions and padding keys. Each position may always see
        itself, so no row is fully masked (a fully masked row would give NaN that spreads)."""
        length = seqs.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        blocked = future.unsqueeze(0) | (seqs == 0).unsqueeze(1)  # [B, L, L]
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=seqs.device)
        return blocked.repeat_interleave(self.heads, dim=0)  # [B * heads, L, L]

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] (left-padded internal ids, L <= max_len) -> next-item representations [B, L, H]."""
        real = seqs > 0
        positions = (real.cumsum(1) - 1).clamp(min=0)
        x = self.item_emb(seqs) + self.pos_emb(positions)
        x = self.dropout(x) * real.unsqueeze(-1)
        h = self.encoder(x, mask=self.attention_mask(seqs))
        return self.norm(h)


def _init_weights(module: nn.Module) -> None:
    # Small normal init as in the reference implementations; default Embedding init (std 1) makes
    # the dot-product scores too large at the start and slows training.
    if isinstance(module, nn.Embedding | nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
