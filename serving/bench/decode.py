"""The engine's decode step beside bare Hugging Face and beside the machine's own bound.

* `engine_over_hf` (and `engine_over_hf_batch1`): decode throughput of the engine on rows of
  one prompt-tuned task / a bare Hugging Face forward loop on the same rows (the virtual tokens
  given to it as input embeddings, its own `DynamicCache`, greedy, EOS suppressed on both sides,
  the same number of new tokens). Start-up is left out: each side is timed from its first
  token (the prefill's) to its last.
* `step_over_bound` (and `_batch1`): the bound's time / the engine's decode step. The bound is
  the larger of the step's FLOPs over the machine's peak matmul FLOP/s and its bytes (weights,
  and the KV it reads) over the machine's copy bandwidth, both measured in this run.
* `kv_bytes_per_token`: KV memory the rows hold / the tokens they hold, summed over every step
  of a continuous-batching run with mixed lengths, over the model's own bytes per token (1.0
  holds nothing but tokens), with the padding share; beside the same run on `DynamicCache`.
* `profile`: the ten ops that take most of a decode step, the engine's and bare HF's.

Sides alternate A B B A ... after a warm-up, and each side's fastest run is compared.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from promptmux.core.fields import GenerationParams
from promptmux.models.loading import load_model
from promptmux.registry import Registry
from promptmux.serving.bench.common import fastest, timed
from promptmux.serving.engine.batching import GenerationRow, cache_argument, cache_of
from promptmux.serving.engine.kv_pool import KVLayout
from promptmux.serving.engine.prompt_cache import CachedPrompt
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler

PROFILED_STEPS = 5


@dataclass
class Decoded:
    tokens: list[list[int]]  # each row's new tokens
    step_s: float  # seconds per decode step

@dataclass(frozen=True)
class Peak:
    flops_per_s: float  # matmul, in the model's dtype
    bytes_per_s: float  # memory traffic of a copy: what it reads and what it writes

    @classmethod
    def measure(cls, device: torch.device, dtype: torch.dtype) -> "Peak":
        """The best of five large matmuls and of five large copies on `device`, after one of each."""
        n = 2048 if device.type == "cpu" else 8192
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        source = torch.randn(2**26, device=device)  # 256 MiB: far beyond any cache
        target = torch.empty_like(source)
        matmul, copy = (min(timed(fn, device) for _ in range(6)) for fn in (lambda: torch.mm(a, b),
                                                                            lambda: target.copy_(source)))
        return cls(2 * n**3 / matmul, 2 * source.numel() * source.element_size() / copy)


def bound_s(model: PreTrainedModel, layout: KVLayout, rows: int, context: int, peak: Peak) -> dict:
    """What a decode step of `rows` rows at `context` positions must compute and read, and the
    time the machine needs for it: the larger of the two."""
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    params = sum(w.numel() for w in weights)
    config = model.config
    attention = 4 * config.num_hidden_layers * context * config.num_attention_heads * layout.head_dim
    flops = rows * (2 * params + attention)
    nbytes = params * weights[0].element_size() + rows * context * layout.bytes_per_token
    compute, memory = flops / peak.flops_per_s, nbytes / peak.bytes_per_s
    return {"flops": flops, "bytes": nbytes, "compute_s": compute, "memory_s": memory, "bound_s": max(compute, memory)}


class BareHF:
    """The plainest fast loop: one forward per token on transformers' own cache."""

    def __init__(self, model: PreTrainedModel, prompt: CachedPrompt, inputs: list[list[int]], eos_ids: set[int]) -> None:
        self.model = model
        self.prompt = prompt
        self.ids = torch.tensor(inputs, device=model.device)  # rows of one length: no padding
        self.eos = sorted(eos_ids)
        self.cache_name = cache_argument(model)

    def _pick(self, output) -> torch.Tensor:
        logits = output.logits[:, -1].float()
        logits[:, self.eos] = float("-inf")  # every row makes all its tokens, as the engine's rows do
        return logits.argmax(-1)

    @torch.inference_mode()
    def generate(self, new: int) -> Decoded:
        rows, length = self.ids.shape
        embeds = torch.cat([self.prompt.embeds[None].expand(rows, -1, -1), self.model.get_input_embeddings()(self.ids)], 1)
        output = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        tokens = [self._pick(output).tolist()]
        first = time.perf_counter()
        position = embeds.shape[1]
        for _ in range(new - 1):
            output = self.model(input_ids=torch.tensor(tokens[-1], device=self.ids.device)[:, None], use_cache=True,
                                logits_to_keep=1, position_ids=torch.full((rows, 1), position, device=self.ids.device),
                                **{self.cache_name: cache_of(output)})
            tokens.append(self._pick(output).tolist())
            position += 1
        return Decoded([list(row) for row in zip(*tokens)], (time.perf_counter() - first) / (new - 1))


def engine_decode(engine: Engine, rows: list[GenerationRow]) -> Decoded:
    """The rows through the scheduler, prefilled together, timed from their first token (the
    prefill's) to the last one's end."""
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    states = [scheduler.submit(row) for row in rows]
    while scheduler.has_work():
        scheduler.step()
    new = max(len(state.generated) for state in states)
    seconds = max(state.finished_at for state in states) - min(state.first_token_at for state in states)
    return Decoded([state.generated for state in states], seconds / (new - 1))


def decode_step_s(sides: dict[str, Callable[[], Decoded]], repeats: int) -> dict[str, list[float]]:
    """Seconds per decode step of each side, `repeats` times; sides alternate A B B A ... after a warm-up."""
    for run in sides.values():
        run()
    order, steps = list(sides), {name: [] for name in sides}
    for _ in range(repeats):
        for name in order:
            steps[name].append(sides[name]().step_s)
        order.reverse()
    return steps


def top_ops(step: Callable[[], object], device: torch.device) -> list[dict]:
    """The ten ops with the most time of their own over `PROFILED_STEPS` steps, per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(PROFILED_STEPS):
            step()
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = list(profile.key_averages())
    total = sum(getattr(e, attribute) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attribute), reverse=True)
    return [{"op": e.key, "ms_per_step": round(getattr(e, attribute) / 1e3 / PROFILED_STEPS, 3),
             "share": round(getattr(e, attribute) / total, 3)} for e in events[:10]]


def profiles(engine: Engine, hf: BareHF, rows: list[GenerationRow]) -> dict:
    """The top ops of one engine decode step and of one bare HF step, on the same rows."""
    batch = engine.prefill(rows)
    engine_ops = top_ops(lambda: engine.decode_step(batch, batch.logits.argmax(-1)), engine.device)
    batch.release()
    with torch.inference_mode():
        ids, embeds = hf.ids, torch.cat([hf.prompt.embeds[None].expand(len(rows), -1, -1),
                                         hf.model.get_input_embeddings()(hf.ids)], 1)
        state = {"output": hf.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), "position": embeds.shape[1]}

        def hf_step() -> None:
            state["output"] = hf.model(
                input_ids=hf._pick(state["output"])[:, None], use_cache=True, logits_to_keep=1,
                position_ids=torch.full((len(ids), 1), state["position"], device=ids.device),
                **{hf.cache_name: cache_of(state["output"])})
            state["position"] += 1

        hf_ops = top_ops(hf_step, engine.device)
    return {"engine": engine_ops, "hf": hf_ops}


def kv_usage(engine: Engine, rows: list[GenerationRow]) -> dict:
    """Positions held and tokens held, summed over every decode step of a continuous-batching
    run of `rows` (mixed lengths), and whether everything was given back at the end."""
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    for row in rows:
        scheduler.submit(row)
    held = tokens = 0
    while scheduler.has_work():
        scheduler.step()
        if scheduler.batch is not None:
            positions, written = scheduler.batch.kv_held()
            held, tokens = held + positions, tokens + written
    stats = engine.kv_stats()
    return {"positions_held": held, "tokens_held": tokens, "padding_share": round(1 - tokens / held, 4),
            "empty_after": stats is None or stats.blocks_held == 0}


def decode_figures(engine: Engine, flat: Engine, registry: Registry, task: str, size: dict) -> dict:
    """Every figure of this module for `engine`, with `flat` (the same engine on DynamicCache)
    for the KV comparison; `size` gives batch, decode_tokens, decode_input_tokens, repeats."""
    device, batch, new = engine.device, size["batch"], size["decode_tokens"]
    prompt = engine.prompt(registry.versions.get(task, 1))
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randint(3, 259, (size["decode_input_tokens"],), generator=generator).tolist() for _ in range(batch)]
    hf = BareHF(load_model(engine.config.base_model, engine.model.dtype, str(device)).eval(), prompt, inputs,
                engine.eos_ids)

    params = GenerationParams(max_new_tokens=new, min_new_tokens=new)

    def engine_run(rows: int) -> Callable[[], Decoded]:
        return lambda: engine_decode(engine, [GenerationRow(prompt, x, params) for x in inputs[:rows]])

    def hf_run(rows: int) -> Callable[[], Decoded]:
        return lambda: BareHF(hf.model, prompt, inputs[:rows], engine.eos_ids).generate(new)

    same_tokens = engine_run(batch)().tokens == hf.generate(new).tokens
    steps = {**decode_step_s({"engine": engine_run(batch), "hf": hf_run(batch)}, size["repeats"]),
             **decode_step_s({"engine_batch1": engine_run(1), "hf_batch1": hf_run(1)}, size["repeats"])}
    best = fastest(steps)
    peak = Peak.measure(device, engine.model.dtype)
    layout = engine.kv_pool.layout if engine.kv_pool is not None else None
    context = prompt.num_virtual_tokens + size["decode_input_tokens"] + new // 2
    bounds = {rows: bound_s(hf.model, layout, rows, context, peak) for rows in (1, batch)} if layout else {}
    draw = torch.Generator().manual_seed(3)

    def between(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=draw))

    longest = size["decode_input_tokens"] * 2
    mixed = [GenerationRow(prompt, torch.randint(3, 259, (between(longest // 8, longest),), generator=draw).tolist(),
                           GenerationParams(max_new_tokens=between(max(2, new // 4), new * 4), min_new_tokens=1))
             for _ in range(batch * 3)]
    pooled, dynamic = kv_usage(engine, mixed), kv_usage(flat, mixed)
    profile_rows = [GenerationRow(prompt, x, GenerationParams(max_new_tokens=PROFILED_STEPS + 2)) for x in inputs]
    return {
        "engine_over_hf": round(best["hf"] / best["engine"], 3),
        "engine_over_hf_batch1": round(best["hf_batch1"] / best["engine_batch1"], 3),
        **({"step_over_bound": round(bounds[batch]["bound_s"] / best["engine"], 3),
            "step_over_bound_batch1": round(bounds[1]["bound_s"] / best["engine_batch1"], 3),
            "kv_bytes_per_token": round(pooled["positions_held"] / pooled["tokens_held"], 3)} if layout else {}),
        "decode": {
            "same_tokens_as_hf": same_tokens, "step_s": best, "step_timings_s": steps, "context": context,
            "peak": {"flops_per_s": peak.flops_per_s, "bytes_per_s": peak.bytes_per_s},
            "bound": {str(rows): figures for rows, figures in bounds.items()},
            "kv": {"model_bytes_per_token": layout.bytes_per_token if layout else None,
                   "pool": pooled, "dynamic_cache": dynamic,
                   "dynamic_cache_bytes_per_token": round(dynamic["positions_held"] / dynamic["tokens_held"], 3)},
            "profile": profiles(engine, hf, profile_rows),
        },
    }
