"""The running decode batch, held in the KV pool: rows join and leave without moving each other.

A row joins after its prefill (newcomers are prefilled together, each with its prompt's KV as
its past): its own keys and values, prompt and input, are copied once into blocks it takes
from the pool, and it keeps a slot (its row in every decode step) until it ends. A decode step
writes each row's new key and value into its current block (taking a new block every `BLOCK`
tokens) and attends over the row's blocks where they lie (`kv_pool.PoolStep`). A row that
leaves gives its slot and blocks back. Positions are per row, as the prefill left them.

The step's shapes are bucketed: rows up to the next bucket of the highest slot in use, blocks
scanned up to the next bucket of the pool's high-water mark, so a compiled step sees few shapes.
"""

import math
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from promptmux.serving.engine.batching import GenerationRow, ModelInputs, cache_of
from promptmux.serving.engine.kv_pool import (
    BLOCK,
    BLOCK_BUCKETS,
    ROW_BUCKETS,
    SCRATCH,
    STEP_ARGUMENT,
    KVPool,
    PooledCache,
    PoolStep,
    bucket,
)


@dataclass(eq=False)
class PooledRow:
    slot: int
    capacity: int  # positions it reserved: beyond them (a static batch's finished row) it writes to scratch
    blocks: list[int]
    length: int  # tokens written into its blocks
    position: int  # the position id of its next token


class PagedBatch:
    """Rows in the pool, in the scheduler's order, with each row's next-token logits."""

    def __init__(self, pool: KVPool, rows: list[PooledRow], logits: torch.Tensor) -> None:
        self.pool = pool
        self.rows = rows
        self.logits = logits  # [rows, vocab]
        self._writing: list[PooledRow] = []

    @classmethod
    def from_prefill(cls, pool: KVPool, rows: list[GenerationRow], inputs: ModelInputs,
                     output: ModelOutput) -> "PagedBatch":
        """Copy each prefilled row's own keys and values (`inputs.attention_mask` marks them, in
        order) from the prefill's cache into blocks of its own."""
        present = inputs.attention_mask.bool()  # [rows, width]
        lengths = present.sum(1).tolist()
        pooled, owners = [], []
        for row, length in zip(rows, lengths):
            slot = pool.take_slot()
            capacity = row.prompt.num_virtual_tokens + len(row.input_ids) + row.params.max_new_tokens
            pooled.append(PooledRow(slot, capacity, [], length, 0))
            owners += [slot] * math.ceil(length / BLOCK)
        blocks = iter(pool.take_blocks(owners))
        where_blocks, where_offsets = [], []
        for row in pooled:
            row.blocks = [next(blocks) for _ in range(math.ceil(row.length / BLOCK))]
            where_blocks += [row.blocks[t // BLOCK] for t in range(row.length)]
            where_offsets += [t % BLOCK for t in range(row.length)]
        index = torch.tensor(where_blocks, dtype=torch.long, device=pool.device)
        places = pool.places(index, torch.tensor(where_offsets, dtype=torch.long, device=pool.device))
        for layer, cached in enumerate(cache_of(output).layers):
            pool.write(layer, places, cached.keys.transpose(1, 2)[present], cached.values.transpose(1, 2)[present])
        pool.fill.index_add_(0, index, torch.ones_like(index))
        pool.tokens_held += sum(lengths)
        for row, position in zip(pooled, inputs.next_positions.tolist()):
            row.position = position
        return cls(pool, pooled, output.logits[:, -1])

    @property
    def size(self) -> int:
        return len(self.rows)

    def kv_held(self) -> tuple[int, int]:
        """(positions the rows hold in the pool, tokens written there)."""
        return sum(len(row.blocks) for row in self.rows) * BLOCK, sum(row.length for row in self.rows)

    def merge(self, other: "PagedBatch") -> None:
        """Append `other`'s rows: their keys and values are in the pool already."""
        self.rows += other.rows
        self.logits = torch.cat([self.logits, other.logits])

    def keep(self, indices: list[int]) -> None:
        """Give back the slot and blocks of every row not in `indices`."""
        kept = set(indices)
        for i, row in enumerate(self.rows):
            if i not in kept:
                self.pool.give_back(row.slot, row.blocks, row.length)
        self.rows = [self.rows[i] for i in indices]
        self.logits = self.logits[torch.tensor(indices, dtype=torch.long, device=self.logits.device)]

    def release(self) -> None:
        """Give back every row's slot and blocks (the batch is dropped)."""
        self.keep([])

    def step_inputs(self, tokens: torch.Tensor, takes_position_ids: bool, cache_name: str) -> dict:
        """Arguments of the forward that feeds each row its latest token (`tokens` [rows])."""
        rows = bucket(max(row.slot for row in self.rows) + 1, ROW_BUCKETS)
        growing = [row for row in self.rows if row.capacity > row.length == len(row.blocks) * BLOCK]
        for row, block in zip(growing, self.pool.take_blocks([row.slot for row in growing])):
            row.blocks.append(block)
        self._writing = [row for row in self.rows if row.length < row.capacity]
        write_blocks, write_offsets, positions = [SCRATCH] * rows, [0] * rows, [0] * rows
        for row in self.rows:
            positions[row.slot] = row.position
        for row in self._writing:
            write_blocks[row.slot], write_offsets[row.slot] = row.blocks[row.length // BLOCK], row.length % BLOCK
        device = self.pool.device
        if self._writing:
            written = torch.tensor([row.blocks[row.length // BLOCK] for row in self._writing], device=device)
            self.pool.fill.index_add_(0, written, torch.ones_like(written))
        step = PoolStep.plan(self.pool, rows, write_blocks, write_offsets,
                             min(bucket(self.pool.high_water, BLOCK_BUCKETS), self.pool.blocks))
        ids = torch.zeros(rows, dtype=torch.long, device=device)
        ids[self._slots()] = tokens
        kwargs = {"input_ids": ids[:, None], cache_name: PooledCache(self.pool, step), STEP_ARGUMENT: step}
        if takes_position_ids:
            kwargs["position_ids"] = torch.tensor(positions, device=device)[:, None]
        return kwargs

    def advance(self, output: ModelOutput) -> None:
        logits = output.logits[:, -1]
        self.logits = logits.index_select(0, self._slots())
        for row in self._writing:
            row.length += 1
        self.pool.tokens_held += len(self._writing)
        for row in self.rows:
            row.position += 1

    def _slots(self) -> torch.Tensor:
        return torch.tensor([row.slot for row in self.rows], dtype=torch.long, device=self.pool.device)
