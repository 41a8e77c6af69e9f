"""`promptmux bench streaming`: what streaming a long output costs, side by side in one run.

* `stream_over_plain`: seconds to stream N tokens through `POST /v1/generate` with
  `"stream": true` / the same request without streaming. Both go through the real app
  (routing, the continuous-batching engine, JSON) in-process over ASGI, so the
  difference is what streaming adds: a detokenizer step, an event and an SSE line per token.
* `full_over_incremental`: seconds to detokenize the N tokens as a stream needs it by
  decoding the whole output again at every token (O(n²), what the engine did before) /
  incrementally (O(n), what it does now).
"""

import asyncio
import json
import time

import httpx
import torch

from promptmux.serving.bench.common import bench_registry, medians
from promptmux.serving.bench.machine import load_average, machine_report, workload
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.detokenizer import IncrementalDetokenizer
from promptmux.serving.http.app import build_app
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

TARGETS = {"stream_over_plain": {"at_most": 1.5}}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "new_tokens": 2000, "repeats": 2},
    "full": {"base_model": "bench-random-llama", "new_tokens": 2000, "repeats": 5},
}
TASK = "long-writer"


async def _side_by_side(client: httpx.AsyncClient, body: dict, repeats: int) -> tuple[dict[str, list[float]], list[int]]:
    async def plain(body: dict = body) -> list[int]:
        response = await client.post("/v1/generate", json=body)
        response.raise_for_status()
        return response.json()["outputs"][0]["token_ids"]

    async def streamed(body: dict = body) -> list[int]:
        tokens: list[int] = []
        async with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    tokens += json.loads(line.removeprefix("data: "))["token_ids"]
        return tokens

    timings: dict[str, list[float]] = {"plain": [], "streamed": []}
    sides = {"plain": plain, "streamed": streamed}
    order, outputs = list(sides), {}
    for name in order:  # warm-up, short
        await sides[name]({**body, "params": {"max_new_tokens": 16}})
    for _ in range(repeats):
        for name in order:
            start = time.perf_counter()
            outputs[name] = await sides[name]()
            timings[name].append(time.perf_counter() - start)
        order.reverse()
    if outputs["plain"] != outputs["streamed"]:
        raise RuntimeError("the streamed tokens differ from the plain request's")
    return timings, outputs["plain"]


def _detokenize(decode, ids: list[int]) -> dict[str, float]:
    start = time.perf_counter()
    for n in range(1, len(ids) + 1):
        decode(ids[:n])
    full = time.perf_counter() - start
    start = time.perf_counter()
    detokenizer = IncrementalDetokenizer(decode)
    for n in range(1, len(ids) + 1):
        detokenizer.update(ids[:n])
    return {"full": full, "incremental": time.perf_counter() - start}


def run_streaming_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    new = size["new_tokens"]
    registry = bench_registry(size["base_model"], {TASK: [16]})
    settings = ServeSettings(registry=registry.uri, request_timeout_s=3600, engine=EngineConfig(
        base_model=size["base_model"], device=device, dtype=dtype, max_new_tokens=new))
    service = PromptmuxService(settings)
    body = {"task": TASK, "input": "write at length", "params": {"max_new_tokens": new, "min_new_tokens": new}}

    async def measure() -> tuple[dict[str, list[float]], list[int]]:
        transport = httpx.ASGITransport(app=build_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://promptmux", timeout=3600) as client:
            return await _side_by_side(client, body, size["repeats"])

    try:
        timings, tokens = asyncio.run(measure())
        detokenizing = _detokenize(service.client.engine.decode, tokens)
    finally:
        service.shutdown()
    median = medians(timings)
    return {
        "stream_over_plain": round(median["streamed"] / median["plain"], 3),
        "full_over_incremental": round(detokenizing["full"] / detokenizing["incremental"], 1),
        "targets": TARGETS,
        "config": {**size, "mode": "quick" if quick else "full", "device": str(service.client.engine.device),
                   "dtype": str(service.client.engine.model.dtype).removeprefix("torch.")},
        "timings_s": timings,
        "median_s": median,
        "detokenize_s": detokenizing,
        "machine": machine_report(torch.device(str(service.client.engine.device)), load_before),
    }
