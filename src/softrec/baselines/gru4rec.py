"""GRU4Rec (Hidasi et al., 2016) in its common sequential-recommendation form (as in RecBole):
a GRU over the item embeddings, its last state projected back to the embedding space, and the
next item scored against the shared item embedding table over the full catalogue.
Inputs are left-padded internal ids (0 = padding, item i = i + 1), as for SASRec.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from softrec.baselines.sasrec import _init_weights


class GRU4Rec(nn.Module):
    def __init__(self, n_items: int, *, hidden: int, layers: int, dropout: float, **_: object):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, hidden)
        self.apply(_init_weights)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B, L] (left-padded internal ids) -> next-item representations [B, L, H]."""
        length = seqs.shape[1]
        lengths = (seqs > 0).sum(1).clamp(min=1)
        # Left padding -> right padding, so the packed GRU never reads the pads; back again after.
        offset = length - lengths.unsqueeze(1)
        steps = torch.arange(length, device=seqs.device)
        right = seqs.gather(1, (steps + offset) % length)
        packed = pack_padded_sequence(
            self.dropout(self.item_emb(right)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=length)
        index = ((steps - offset) % length).unsqueeze(-1).expand(-1, -1, out.shape[-1])
        return self.proj(out.gather(1, index))
