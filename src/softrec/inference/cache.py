"""The KV cache of beam search over prefilled prompts: one copy of each prompt, room to grow in place.

transformers' `DynamicCache` concatenates every step and reorders every row of every layer every
step; on a CPU those copies cost more than the attention they feed. Built on `DynamicCache` (so
every transformers model reads it unchanged), it overrides only the storage.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class PromptSharedCache(DynamicCache):
    """A KV cache whose rows are one prefilled prompt repeated for each of its beams.

    Two copies of the whole cache per step dominate CPU beam search over a few-hundred-token
    prompt, and both are avoidable:
    - reordering: beam search only moves beams within their own prompt's group, and the prefilled
      part of every row in a group is the same copy, so only the tokens added after the prefill
      are reordered;
    - growing: `expand_for_beams` preallocates room for the new tokens, so each step writes its
      keys and values in place instead of concatenating a new cache.
    The values seen by attention are exactly those of a plain `DynamicCache`.

    Refilling (`append_prompts`, `trim`): prompts prefilled later join the batch as new rows. Every
    row keeps its own keys at its own positions; the rows are only aligned on their last column,
    with masked zero columns on the left of the shorter ones, so attention sees what it would see
    for that row alone. Columns masked in every row are dropped when prompts leave.
    """

    def __init__(self, config: Any):
        super().__init__(config=config)
        self.shared_length = 0  # tokens identical within each prompt's group of rows
        self._room: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def repeat_rows(self, rows: int) -> None:
        """Copy a one-row cache (a prefix every prompt of the batch shares) to `rows` rows."""
        for layer in self.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys = layer.keys.expand(rows, -1, -1, -1).contiguous()
                layer.values = layer.values.expand(rows, -1, -1, -1).contiguous()

    def expand_for_beams(self, num_beams: int, extra: int) -> None:
        """Repeat every prompt's rows `num_beams` times, into buffers with room for `extra` tokens."""
        self.shared_length = self.get_seq_length()
        for index, layer in enumerate(self.layers):
            growable = type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and layer.is_initialized
            if growable and layer.is_sliding and layer.cumulative_length + extra >= layer.sliding_window:
                growable = False  # the window would slide: keep the standard path
            if not growable:
                layer.batch_repeat_interleave(num_beams)
                continue
            length = layer.keys.shape[-2]
            buffers = []
            for tensor in (layer.keys, layer.values):
                rows, heads, _, dim = tensor.shape
                buffer = tensor.new_empty((rows * num_beams, heads, length + extra, dim))
                buffer.view(rows, num_beams, heads, length + extra, dim)[:, :, :, :length] = tensor[:, None]
                buffers.append(buffer)
            self._room[index] = (buffers[0], buffers[1])
            layer.keys, layer.values = buffers[0][:, :, :length], buffers[1][:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        room = self._room.get(layer_idx)
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if room is None or layer is None:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        start, new = layer.keys.shape[-2], key_states.shape[-2]
        if start + new > room[0].shape[-2]:
            del self._room[layer_idx]  # out of room: back to concatenation
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        room[0][:, :, start : start + new] = key_states
        room[1][:, :, start : start + new] = value_states
        layer.keys, layer.values = room[0][:, :, : start + new], room[1][:, :, : start + new]
        if layer.is_sliding:
            layer.cumulative_length += new
        return layer.keys, layer.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for index, layer in enumerate(self.layers):
            if not getattr(layer, "is_initialized", False) or layer.get_seq_length() == 0:
                continue
            stored = layer.keys.shape[-2]
            total = getattr(layer, "cumulative_length", stored)  # sliding layers drop old tokens
            tail = total - self.shared_length
            if tail >= stored:  # the shared part slid out of the window: plain reorder
                layer.reorder_cache(beam_idx)
                self._room.pop(index, None)
            elif tail > 0:
                rows = beam_idx.to(layer.keys.device)
                for tensor in (layer.keys, layer.values):
                    recent = tensor[:, :, -tail:]
                    recent.copy_(recent.index_select(0, rows))

    def select_prompts(self, prompts: torch.Tensor, num_beams: int) -> None:
        """Keep only the rows of the prompts at these batch positions (the others have finished)."""
        rows = (prompts[:, None] * num_beams + torch.arange(num_beams, device=prompts.device)).reshape(-1)
        for index, layer in enumerate(self.layers):
            if not getattr(layer, "is_initialized", False) or layer.get_seq_length() == 0:
                continue
            room = self._room.get(index)
            if room is None:
                layer.batch_select_indices(rows.to(layer.keys.device))
                continue
            length = layer.keys.shape[-2]
            keys, values = (buffer.index_select(0, rows.to(buffer.device)) for buffer in room)
            self._room[index] = (keys, values)
            layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]

    def can_append(self) -> bool:
        """Every layer writes in place (no layer whose window slides), so rows can be merged."""
        return all(index in self._room for index, layer in enumerate(self.layers)
                   if getattr(layer, "is_initialized", False))

    def append_prompts(self, other: PromptSharedCache, num_beams: int, extra: int) -> int:
        """Append `other`'s prompts (one prefilled row each) as `num_beams` rows each, right-aligned
        with this cache's rows, with room for `extra` more tokens; returns the new column count."""
        old_length = self.layers[0].keys.shape[-2]
        columns = max(old_length, other.layers[0].keys.shape[-2])
        for index, (layer, new) in enumerate(zip(self.layers, other.layers, strict=True)):
            new_length = new.keys.shape[-2]
            buffers = []
            for old, added in ((layer.keys, new.keys), (layer.values, new.values)):
                rows, heads, _, dim = old.shape
                buffer = old.new_zeros((rows + added.shape[0] * num_beams, heads, columns + extra, dim))
                buffer[:rows, :, columns - old_length : columns] = old
                buffer[rows:, :, columns - new_length : columns] = added.repeat_interleave(num_beams, dim=0)
                buffers.append(buffer)
            self._room[index] = (buffers[0], buffers[1])
            layer.keys, layer.values = buffers[0][:, :, :columns], buffers[1][:, :, :columns]
            if layer.is_sliding:
                layer.cumulative_length = columns
        # the old rows' beams share their (shifted) prefill; the new rows' share everything so far
        self.shared_length += columns - old_length
        return columns

    def trim(self, columns: int) -> None:
        """Drop the first `columns` columns (masked in every row)."""
        for index, layer in enumerate(self.layers):
            keys, values = self._room[index]
            length = layer.keys.shape[-2] - columns
            self._room[index] = (keys[:, :, columns:], values[:, :, columns:])
            layer.keys, layer.values = keys[:, :, columns : columns + length], values[:, :, columns : columns + length]
            if layer.is_sliding:
                layer.cumulative_length = length
        self.shared_length = max(0, self.shared_length - columns)
