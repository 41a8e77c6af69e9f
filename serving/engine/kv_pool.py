"""The KV pool: every layer's keys and values, allocated once, in blocks that rows take and give back.

Blocks (vLLM's paged layout), not a slot per row (gpt-fast's static cache): a slot must hold
the longest row a request may ask for, so a pool of slots holds memory for positions most rows
never reach, while a row holds at most one partly written block (`BLOCK` tokens). A row takes
its blocks as it grows, within the tokens it reserved at admission (so a row that was admitted
never runs out of room, and never fails a neighbour), and gives them back when it ends.

A pinned prompt's KV is written into each row's own first blocks at admission, with the row's
input: one copy of the prompt's KV per row, never per step. Sharing the prompt's blocks
read-only would save that copy and its memory, but a shared block has several owners, and the
attention below needs each block to have one (what that costs: `virtual tokens x KV bytes per
token` per row, 0.9 MiB for 20 virtual tokens of SmolLM2-135M in float32).

Attention reads the blocks where they lie (`PoolStep.attend`): each block's scores are taken
against the query of the row that owns it, and a softmax across each row's blocks combines
them (the row's maximum, exponents and sums, gathered by owner). No row's keys are copied to
form a batch: there is no per-step concatenation, no padding of rows to a common length and
no trim. The step's shapes are bucketed (rows and blocks rounded up) so that it can be compiled
or captured; padding rows write to block 0, which belongs to nobody. The pool is allocated
uninitialised (on a CPU, memory is committed only as blocks are first used) and a block is
zeroed when a row takes it, so a row's unwritten positions are zeros; blocks nobody holds are
scanned into a row that is discarded, so whatever a former holder left there reaches no row.

The model reaches the pool through transformers' own seams: `PooledCache` is the `Cache` a
decode forward gets (its `update` writes each row's new key and value into its block), and
`pooled_attention` is registered in `AttentionInterface`; without a `PoolStep` in the forward's
keyword arguments (prefill, classification, a prompt's KV) it is exactly `sdpa`.
"""

import heapq
import math
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BLOCK = 16  # tokens per block: a row wastes at most BLOCK - 1 positions
ATTENTION = "promptmux_kv_pool"
STEP_ARGUMENT = "kv_pool_step"
SCRATCH = 0  # the block that padding rows write to; never a row's
FREE = -1  # the owner of a block no row holds


def bucket(count: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `count`, or `count` rounded up to a multiple of the largest."""
    for size in buckets:
        if count <= size:
            return size
    return math.ceil(count / buckets[-1]) * buckets[-1]


ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BLOCK_BUCKETS = (16,)  # blocks a step scans, in multiples of 16: each one scanned is read in every layer


@dataclass(frozen=True)
class KVLayout:
    """The model's own keys and values per token: layers x KV heads x head size, in a dtype."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def of(cls, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> "KVLayout":
        """The layout of a prompt's KV as the model computed it (per layer `[heads, tokens, head dim]`)."""
        key = kv[0][0]
        return cls(len(kv), key.shape[0], key.shape[2], key.dtype)


@dataclass
class PoolStats:
    blocks: int  # all blocks, the scratch block included
    blocks_held: int  # blocks rows hold now
    tokens_held: int  # tokens written into them


class KVPool:
    """Keys and values `[blocks, KV heads, BLOCK, head dim]` per layer, allocated once, and which
    row (slot) holds each block. Slots are a decode step's batch rows: a row keeps its slot from
    admission to its end, so joining and leaving move nothing."""

    def __init__(self, layout: KVLayout, tokens: int, slots: int, device: torch.device) -> None:
        self.layout = layout
        self.device = device
        blocks = math.ceil(tokens / BLOCK) + slots + 1  # every row's last block may be partly written
        shape = (blocks, layout.kv_heads, BLOCK, layout.head_dim)
        self.keys = [torch.empty(shape, dtype=layout.dtype, device=device) for _ in range(layout.layers)]
        self.values = [torch.empty(shape, dtype=layout.dtype, device=device) for _ in range(layout.layers)]
        self.owner = torch.full((blocks,), FREE, dtype=torch.long, device=device)  # the slot of each held block
        self.fill = torch.zeros(blocks, dtype=torch.long, device=device)  # tokens written into each block
        self.slots = slots
        self._free_blocks = list(range(1, blocks))  # a heap: the lowest first keeps the scanned range short
        self._free_slots = list(range(slots))
        self._held: set[int] = set()
        self.tokens_held = 0

    @property
    def blocks(self) -> int:
        return self.owner.shape[0]

    @property
    def capacity_tokens(self) -> int:
        """Tokens that rows may reserve in all: every row may hold one partly written block."""
        return (self.blocks - 1 - self.slots) * BLOCK

    @property
    def high_water(self) -> int:
        """Blocks a step scans: up to the highest block any row holds."""
        return max(self._held, default=0) + 1

    def take_slot(self) -> int:
        if not self._free_slots:
            raise RuntimeError("no free slot in the KV pool: more rows than engine.max_batch_size")
        return heapq.heappop(self._free_slots)

    def take_blocks(self, owners: list[int]) -> list[int]:
        """One zeroed block for each slot in `owners`."""
        if not owners:
            return []
        if len(owners) > len(self._free_blocks):
            raise RuntimeError(f"the KV pool has {len(self._free_blocks)} free blocks; {len(owners)} are needed")
        blocks = [heapq.heappop(self._free_blocks) for _ in owners]
        self._held.update(blocks)
        index = torch.tensor(blocks, dtype=torch.long, device=self.device)
        self.owner[index] = torch.tensor(owners, dtype=torch.long, device=self.device)
        self.fill[index] = 0
        for keys, values in zip(self.keys, self.values):
            keys.index_fill_(0, index, 0)
            values.index_fill_(0, index, 0)
        return blocks

    def give_back(self, slot: int, blocks: list[int], tokens: int) -> None:
        if blocks:
            index = torch.tensor(blocks, dtype=torch.long, device=self.device)
            self.owner[index] = FREE
            self.fill[index] = 0
            self._held.difference_update(blocks)
            for block in blocks:
                heapq.heappush(self._free_blocks, block)
        heapq.heappush(self._free_slots, slot)
        self.tokens_held -= tokens

    def places(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Where tokens at (block, offset) go, per KV head, in a layer seen as `[blocks x KV heads x
        BLOCK, head dim]`: `[tokens x KV heads]`."""
        heads = torch.arange(self.layout.kv_heads, device=self.device)
        return ((blocks[:, None] * self.layout.kv_heads + heads) * BLOCK + offsets[:, None]).reshape(-1)

    def write(self, layer: int, places: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write tokens' keys and values `[tokens, KV heads, head dim]` at their `places`."""
        head_dim = self.layout.head_dim
        self.keys[layer].view(-1, head_dim).index_copy_(0, places, keys.reshape(-1, head_dim))
        self.values[layer].view(-1, head_dim).index_copy_(0, places, values.reshape(-1, head_dim))

    def stats(self) -> PoolStats:
        return PoolStats(self.blocks, len(self._held), self.tokens_held)


@dataclass
class PoolStep:
    """One decode step over the pool: where each row's new key and value go, and which blocks
    the attention scans, with the row that owns each and how much of it is written.

    Shapes: `places` [rows x KV heads] (`KVPool.places`); `owner` [blocks scanned], the row of
    each block, `rows` for a block no row holds (summed into a row that is then dropped);
    `query_owner` the same with `rows - 1` there; `bias` [blocks scanned x KV heads, 1, BLOCK]
    (0 where a token is, -inf elsewhere)."""

    rows: int
    places: torch.Tensor
    owner: torch.Tensor
    query_owner: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def plan(cls, pool: KVPool, rows: int, write_blocks: list[int], write_offsets: list[int], scanned: int
             ) -> "PoolStep":
        device = pool.device
        owner = pool.owner[:scanned]
        owner = torch.where(owner == FREE, rows, owner)
        unwritten = torch.arange(BLOCK, device=device) >= pool.fill[:scanned, None]  # [scanned, BLOCK]
        bias = torch.zeros((scanned, pool.layout.kv_heads, 1, BLOCK), dtype=pool.layout.dtype, device=device)
        bias.masked_fill_(unwritten[:, None, None, :], float("-inf"))
        places = pool.places(torch.tensor(write_blocks, dtype=torch.long, device=device),
                             torch.tensor(write_offsets, dtype=torch.long, device=device))
        return cls(rows, places, owner, owner.clamp(max=rows - 1), bias.view(-1, 1, BLOCK))

    def write(self, pool: KVPool, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write the step's keys and values `[rows, KV heads, 1, head dim]`."""
        pool.write(layer, self.places, keys[:, :, -1], values[:, :, -1])

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """Each row's attention over its own blocks: `query` [rows, heads, 1, head dim], a layer's
        pool `keys`/`values` [blocks, KV heads, BLOCK, head dim] -> [rows, 1, heads, head dim].
        Products run in the model's dtype; the softmax and the sums over blocks in float32."""
        rows, heads, _, head_dim = query.shape
        kv_heads = keys.shape[1]
        group = heads // kv_heads  # query heads that share a KV head
        scanned = self.owner.shape[0]
        per_block = query.view(rows, heads, head_dim).index_select(0, self.query_owner)
        scores = torch.baddbmm(  # [scanned x KV heads, group, BLOCK]
            self.bias, per_block.view(-1, group, head_dim), keys[:scanned].view(-1, BLOCK, head_dim).transpose(1, 2),
            alpha=scaling)
        scores = scores.view(scanned, heads, BLOCK).float()
        row_max = scores.new_full((rows + 1, heads), torch.finfo(scores.dtype).min)  # and nobody's row
        row_max.scatter_reduce_(0, self.owner[:, None].expand(-1, heads), scores.amax(-1), "amax")
        probs = scores.sub_(row_max.index_select(0, self.owner).unsqueeze(-1)).exp_()
        sums = probs.new_zeros(row_max.shape).index_add_(0, self.owner, probs.sum(-1))
        weighted = torch.bmm(probs.to(values.dtype).view(-1, group, BLOCK), values[:scanned].view(-1, BLOCK, head_dim))
        out = probs.new_zeros((rows + 1, heads, head_dim))
        out.index_add_(0, self.owner, weighted.view(scanned, heads, head_dim).float())
        out = out[:rows].div_(sums[:rows].clamp_(min=torch.finfo(sums.dtype).tiny).unsqueeze(-1))
        return out.to(query.dtype).view(rows, 1, heads, head_dim)


class PooledCache(Cache):
    """The `Cache` a decode forward gets: `update` writes the step's keys and values into the pool
    and hands the layer's whole pool to `pooled_attention`, which reads only the rows' blocks."""

    def __init__(self, pool: KVPool, step: PoolStep) -> None:
        super().__init__(layers=[])
        self.pool = pool
        self.step = step

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.step.write(self.pool, layer_idx, key_states, value_states)
        return self.pool.keys[layer_idx], self.pool.values[layer_idx]

    def __len__(self) -> int:
        return self.pool.layout.layers


def pooled_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs
                     ) -> tuple[torch.Tensor, None]:
    """A decode step over the pool when the forward carries a `PoolStep`; otherwise `sdpa` itself."""
    step: PoolStep | None = kwargs.pop(STEP_ARGUMENT, None)
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    return step.attend(query, key, value, scaling if scaling is not None else query.shape[-1] ** -0.5), None


AttentionInterface.register(ATTENTION, pooled_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
