"""The running decode batch on transformers' `DynamicCache`: for a model the KV pool cannot serve.

The engine holds its running rows in the KV pool (`paged_batch.py`) wherever the model's
attention goes through transformers' `AttentionInterface` and its cache is a plain one. For
any other model (Bloom computes its own ALiBi attention; sliding windows and recurrent state
have caches of their own) it says so at start-up and decodes here, as it always has.

Rows prefilled together join a running batch by left-padding the shorter of the two
caches (and masks) to a common length and concatenating along the batch dimension.
Rows that finish leave by index selection, after which columns that are padding for
every remaining row are trimmed. Positions are per row, so padding never moves them.

The attention mask lives on the device in a buffer with room for `MASK_CHUNK` more
columns: a decode step writes one column into it instead of concatenating a new mask.
"""

import torch
from transformers import DynamicCache

from promptmux.serving.engine.batching import ModelInputs, cache_of

MASK_CHUNK = 64


class DynamicBatch:
    def __init__(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # [rows, cache length], a view of the buffer
        self.positions = positions  # [rows]: each row's next position
        self.logits = logits  # [rows, vocab]: each row's next-token logits

    @classmethod
    def from_prefill(cls, inputs: ModelInputs, output) -> "DynamicBatch":
        return cls(cache_of(output), inputs.attention_mask, inputs.next_positions, output.logits[:, -1])

    @property
    def mask(self) -> torch.Tensor:
        return self._buffer[:, : self._length]

    @mask.setter
    def mask(self, mask: torch.Tensor) -> None:
        self._length = mask.shape[1]
        self._buffer = mask.new_zeros((mask.shape[0], self._length + MASK_CHUNK))
        self._buffer[:, : self._length] = mask

    @property
    def size(self) -> int:
        return self._buffer.shape[0]

    def kv_held(self) -> tuple[int, int]:
        """(positions the cache holds: every row as long as the longest, tokens among them)."""
        return self.mask.numel(), int(self.mask.sum())

    def merge(self, other: "DynamicBatch") -> None:
        """Append `other`'s rows to this batch (one copy of each cache tensor)."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = _stack_left_aligned(mine.keys, theirs.keys, length)
            mine.values = _stack_left_aligned(mine.values, theirs.values, length)
        self.mask = _stack_left_aligned(self.mask, other.mask, length)
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])

    def release(self) -> None:
        """Nothing to give back: the cache is freed with the batch."""

    def keep(self, indices: list[int]) -> None:
        """Drop every row not in `indices`, then trim columns that are padding for all rows."""
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        used = self.mask.sum(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def step_inputs(self, tokens: torch.Tensor, takes_position_ids: bool, cache_name: str) -> dict:
        """Arguments of the forward that feeds each row its latest token."""
        if self._length == self._buffer.shape[1]:
            self.mask = self.mask  # a buffer with room again
        self._buffer[:, self._length] = 1
        self._length += 1
        kwargs = {"input_ids": tokens[:, None], "attention_mask": self.mask, cache_name: self.cache}
        if takes_position_ids:
            kwargs["position_ids"] = self.positions[:, None]
        return kwargs

    def advance(self, output) -> None:
        self.cache, self.logits = cache_of(output), output.logits[:, -1]
        self.positions = self.positions + 1


def _stack_left_aligned(first: torch.Tensor, second: torch.Tensor, length: int) -> torch.Tensor:
    """Stack two `[batch, ..., seq]`-ordered tensors along batch, each right-aligned in a
    sequence of `length` (padding on the left). The sequence axis is dim 2 of a cache
    tensor `[batch, heads, seq, dim]` and dim 1 of a mask `[batch, seq]`."""
    axis = 1 if first.dim() == 2 else 2
    shape = list(first.shape)
    shape[0], shape[axis] = first.shape[0] + second.shape[0], length
    out = first.new_zeros(shape)
    out[: first.shape[0]].narrow(axis, length - first.shape[axis], first.shape[axis]).copy_(first)
    out[first.shape[0]:].narrow(axis, length - second.shape[axis], second.shape[axis]).copy_(second)
    return out
