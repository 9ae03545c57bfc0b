"""Catalogue title trie and the constrained-decoding logits processor (the reference's inference.py).

The model answers with `response_text(title)` followed by EOS, so the trie holds the token ids of the
WHOLE tokenized response plus EOS. Tokenizing the response as one string matters: a BPE tokenizer
may merge the opening quote with the first letters of the title (`"The` vs `"` `The`), so title
pieces tokenized apart would not be the paths the model actually generates. Two items with the same
title share one path; the path's end (the node after EOS) maps to all their ids.

`TrieLogitsProcessor` is the fast constrained decoder: the trie is stored as sorted edge keys
(`node * vocab + token`) so the state of every beam is found with one vectorised `searchsorted` per
generated position, and masking is one gather/scatter of the allowed (row, token) pairs; no Python
work per beam, and nothing proportional to the vocabulary except the single output fill.
`DictTrie.prefix_allowed_tokens_fn` is the plain baseline (a Python dict trie for
`generate(prefix_allowed_tokens_fn=...)`), kept for the equivalence test and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from softrec.data.prompts import response_text

DEAD = -1  # state of a beam whose tokens left the trie (or that already ended with EOS)


def tokenize_responses(tokenizer: Any, titles: Sequence[str], end_token_id: int | None = None) -> list[list[int]]:
    """Token ids the model generates for each title: the whole quoted response, then the end token
    (EOS unless given: chat templates end a turn with their own token)."""
    end = tokenizer.eos_token_id if end_token_id is None else end_token_id
    encoded = tokenizer([response_text(t) for t in titles], add_special_tokens=False)["input_ids"]
    return [list(ids) + [end] for ids in encoded]


class TitleTrie:
    """A prefix tree over the tokenized responses of a catalogue.

    Node 0 is the root. Edges are held as CSR arrays sorted by (node, token): the children of node
    n are `edge_tokens[offsets[n]:offsets[n+1]]`, reaching `edge_child[...]`.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int, vocab_size: int):
        self.eos_token_id = int(eos_token_id)
        self.vocab_size = int(vocab_size)
        children: list[dict[int, int]] = [{}]
        self.items: dict[int, list[int]] = {}  # end node (after EOS) -> item ids, ascending
        for item_id, seq in enumerate(sequences):
            node = 0
            for token in seq:
                nxt = children[node].get(token)
                if nxt is None:
                    nxt = len(children)
                    children[node][token] = nxt
                    children.append({})
                node = nxt
            self.items.setdefault(node, []).append(item_id)
        self.num_nodes = len(children)
        self._children = children
        src, tok, dst = [], [], []
        for node, edges in enumerate(children):
            for token in sorted(edges):
                src.append(node)
                tok.append(token)
                dst.append(edges[token])
        src_t = torch.tensor(src, dtype=torch.long)
        self.edge_tokens = torch.tensor(tok, dtype=torch.long)
        self.edge_child = torch.tensor(dst, dtype=torch.long)
        self.edge_keys = src_t * self.vocab_size + self.edge_tokens  # sorted: src then token
        self.tokens = torch.unique(self.edge_tokens)  # every token some title uses
        counts = torch.bincount(src_t, minlength=self.num_nodes)
        self.offsets = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(counts, 0)

    @classmethod
    def from_titles(cls, tokenizer: Any, titles: Sequence[str], end_token_id: int | None = None) -> TitleTrie:
        """Item id = position in `titles` (the catalogue order)."""
        end = tokenizer.eos_token_id if end_token_id is None else end_token_id
        return cls(tokenize_responses(tokenizer, titles, end), end, len(tokenizer))

    # -------------------------------------------------------------- scalar queries
    def walk(self, tokens: Sequence[int]) -> int:
        """Node reached by `tokens` from the root, or DEAD."""
        node = 0
        for token in tokens:
            node = self._children[node].get(int(token), DEAD)
            if node == DEAD:
                return DEAD
        return node

    def items_for(self, tokens: Sequence[int]) -> list[int]:
        """Item ids of a complete path (ending with EOS; trailing pad/EOS repeats ignored)."""
        tokens = list(tokens)
        if self.eos_token_id in tokens:
            tokens = tokens[: tokens.index(self.eos_token_id) + 1]
        node = self.walk(tokens)
        return list(self.items.get(node, [])) if node != DEAD else []

    def allowed(self, tokens: Sequence[int]) -> list[int]:
        node = self.walk(tokens)
        if node == DEAD or not self._children[node]:
            return [self.eos_token_id]
        return sorted(self._children[node])

    # -------------------------------------------------------------- vectorised queries
    def states(self, generated: torch.Tensor) -> torch.Tensor:
        """Node of every row of `generated` [rows, t] (DEAD where the path left the trie)."""
        node = torch.zeros(generated.shape[0], dtype=torch.long)
        n_edges = self.edge_keys.numel()
        for column in generated.to("cpu", torch.long).unbind(1):
            key = node.clamp(min=0) * self.vocab_size + column
            pos = torch.searchsorted(self.edge_keys, key).clamp(max=n_edges - 1)
            found = (self.edge_keys[pos] == key) & (node >= 0) & (column < self.vocab_size)
            node = torch.where(found, self.edge_child[pos], torch.full_like(node, DEAD))
        return node

    def allowed_pairs(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, token) index pairs allowed for each row's node; DEAD or leaf rows get EOS only."""
        safe = nodes.clamp(min=0)
        start = self.offsets[safe]
        count = torch.where(nodes >= 0, self.offsets[safe + 1] - start, torch.zeros_like(start))
        rows = torch.arange(nodes.numel())
        stuck = count == 0
        edge_rows = torch.repeat_interleave(rows, count)
        # position of each pair inside its row's CSR slice: global index minus the row's first index
        first = torch.cumsum(count, 0) - count
        within = torch.arange(int(count.sum())) - torch.repeat_interleave(first, count)
        edge_tok = self.edge_tokens[torch.repeat_interleave(start, count) + within]
        eos_rows = rows[stuck]
        eos_tok = torch.full_like(eos_rows, self.eos_token_id)
        return torch.cat([edge_rows, eos_rows]), torch.cat([edge_tok, eos_tok])


class TrieLogitsProcessor(LogitsProcessor):
    """Keeps only the scores of tokens that continue a catalogue title; everything else is -inf.

    `prompt_length` is the (padded) prompt width: generated tokens start there in `input_ids`.
    Allowed scores are kept unchanged, so the result equals `scores + mask` of the baseline. Works
    in place on `scores` (a fresh tensor in `generate`; a 262k vocabulary makes copies costly).
    """

    def __init__(self, trie: TitleTrie, prompt_length: int):
        self.trie = trie
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].cpu()
        rows, tokens = self.trie.allowed_pairs(self.trie.states(generated))
        rows, tokens = rows.to(scores.device), tokens.to(scores.device)
        allowed = scores[rows, tokens]
        # in place: generate hands over a fresh log-softmax tensor it does not reuse
        scores.fill_(-float("inf"))
        scores[rows, tokens] = allowed
        return scores


class DictTrie:
    """The straightforward baseline: nested Python dicts, walked from the root for every beam."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int):
        self.eos_token_id = eos_token_id
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})

    @classmethod
    def from_titles(cls, tokenizer: Any, titles: Sequence[str], end_token_id: int | None = None) -> DictTrie:
        end = tokenizer.eos_token_id if end_token_id is None else end_token_id
        return cls(tokenize_responses(tokenizer, titles, end), end)

    def prefix_allowed_tokens_fn(self, prompt_length: int) -> Callable[[int, torch.Tensor], list[int]]:
        def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
            node = self.root
            for token in sent[prompt_length:].tolist():
                node = node.get(token)
                if node is None:
                    return [self.eos_token_id]
            return list(node) or [self.eos_token_id]

        return allowed
