"""Mixed-task batch assembly: the part no library does.

Every row has its own soft prompt (any length) and its own input. For each row, the
virtual tokens sit at positions 0..n-1 and the input at n..n+L-1, exactly as PEFT lays
out a single request, whatever else is in the batch.

* Embedding path: one forward over `[pad..][prompt embeds][input embeds]` per row.
* Pinned-KV path: the virtual tokens' key/value states were computed once when the
  prompt was loaded; the batch's past is assembled from them as
  `[pad..][virtual KV]` per row, and only the inputs `[pad..][input]` are run. Keys are
  stored after rotary embedding (Llama, Granite), learned absolute positions enter
  through the virtual tokens' own computation (GPT-2), and ALiBi (Bloom) is rebuilt from
  the attention mask, whose holes it skips — so the result is exact for all three.

Padding is on the left of each segment and masked; positions come from the cumulative
mask, so pads never shift a row's positions.
"""

import inspect
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.utils import ModelOutput

from promptmux.core.fields import GenerationParams
from promptmux.serving.engine.prompt_cache import CachedPrompt


@dataclass
class Row:
    prompt: CachedPrompt
    input_ids: list[int]


@dataclass
class GenerationRow(Row):
    params: GenerationParams
    owner: str = ""  # whose request it is (a tenant): admission is fair across owners (`waiting.py`)
    weight: float = 1.0  # the owner's share of admissions while others wait


@dataclass
class ClassificationRow(Row):
    verbalizers: dict[str, list[int]]  # label -> its verbalizer's token ids


@dataclass
class ModelInputs:
    """Keyword arguments for one forward, plus what the decode loop carries on."""

    kwargs: dict
    attention_mask: torch.Tensor
    next_positions: torch.Tensor


def cache_argument(model: PreTrainedModel) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.24, where
    `past_key_values` is deprecated, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: ModelOutput) -> Cache:
    """The KV cache a forward returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def embedding_batch(
    model: PreTrainedModel, rows: list[Row], pad_id: int, takes_position_ids: bool
) -> ModelInputs:
    """Inputs for a forward that recomputes every row's virtual tokens."""
    device = model.device
    width = max(r.prompt.num_virtual_tokens + len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        length = row.prompt.num_virtual_tokens + len(row.input_ids)
        ids[b, width - len(row.input_ids):] = torch.tensor(row.input_ids, dtype=torch.long)
        mask[b, width - length:] = 1
    ids, mask = ids.to(device), mask.to(device)
    embeds = model.get_input_embeddings()(ids)
    for b, row in enumerate(rows):
        n, length = row.prompt.num_virtual_tokens, len(row.input_ids)
        embeds[b, width - length - n: width - length] = row.prompt.embeds
    positions = positions_from_mask(mask)
    kwargs = {"inputs_embeds": embeds, "attention_mask": mask}
    if takes_position_ids:
        kwargs["position_ids"] = positions
    return ModelInputs(kwargs, mask, positions[:, -1] + 1)


def pinned_batch(
    model: PreTrainedModel, rows: list[Row], pad_id: int, takes_position_ids: bool
) -> ModelInputs:
    """Inputs for a forward over the inputs only, with each row's virtual-token KV as its past."""
    device = model.device
    past_len = max(r.prompt.num_virtual_tokens for r in rows)
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), past_len + width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row.input_ids):] = torch.tensor(row.input_ids, dtype=torch.long)
        mask[b, past_len - row.prompt.num_virtual_tokens: past_len] = 1
        mask[b, past_len + width - len(row.input_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    layers = []
    for layer, (key, value) in enumerate(rows[0].prompt.kv):
        keys = key.new_zeros((len(rows), key.shape[0], past_len, key.shape[2]))
        values = value.new_zeros((len(rows), value.shape[0], past_len, value.shape[2]))
        for b, row in enumerate(rows):
            row_key, row_value = row.prompt.kv[layer]
            keys[b, :, past_len - row_key.shape[1]:] = row_key
            values[b, :, past_len - row_value.shape[1]:] = row_value
        layers.append((keys, values))
    positions = positions_from_mask(mask)[:, past_len:]
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        cache_argument(model): DynamicCache(ddp_cache_data=layers, config=model.config),
    }
    if takes_position_ids:
        kwargs["position_ids"] = positions
    return ModelInputs(kwargs, mask, positions[:, -1] + 1)


def virtual_token_kv(
    model: PreTrainedModel, embeds: torch.Tensor, takes_position_ids: bool
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The key/value states of a soft prompt at positions 0..n-1, per layer, or None when the
    model's cache is not a plain dynamic cache (sliding windows, recurrent state, ...)."""
    n = embeds.shape[0]
    kwargs = {"inputs_embeds": embeds[None], "attention_mask": torch.ones((1, n), dtype=torch.long, device=embeds.device)}
    if takes_position_ids:
        kwargs["position_ids"] = torch.arange(n, device=embeds.device)[None]
    with torch.inference_mode():
        cache = cache_of(model(**kwargs, use_cache=True))
    if type(cache) is not DynamicCache or any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
        return None
    return [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers]
