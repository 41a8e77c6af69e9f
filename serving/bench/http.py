"""`promptmux bench http`: the same mixed-task workload through HTTP (Ray Serve, concurrent
clients) and through the service called in-process, side by side in one run.

Both sides go through `PromptmuxService` (routing, templating, the continuous-batching
engine) with the same concurrency; the HTTP side adds the client, the Serve proxy and
the replica hop. There are more clients than batch slots, so both sides keep a queue
and the engine stays busy. The in-process side runs first and is released before Ray
starts.
"""

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import torch

from promptmux.serving.bench.common import bench_registry, percentile
from promptmux.serving.bench.machine import load_average, machine_report, workload
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.hosting.ports import free_port
from promptmux.serving.http.api import GenerateBody
from promptmux.serving.runtime.requests import Call
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

TARGETS = {"http_over_engine": 0.8}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "requests": 48, "tasks": 8, "concurrency": 32, "max_batch_size": 16,
              "new_tokens": [32, 96]},
    "full": {"base_model": "bench-random-llama", "requests": 192, "tasks": 16, "concurrency": 32, "max_batch_size": 16,
             "new_tokens": [32, 96]},
}


def _bodies(size: dict) -> list[dict]:
    rng = random.Random(0)
    words = ["dog", "groomer", "gentle", "price", "poet", "chef", "meeting", "logistician", "kind", "late"]
    bodies = []
    for i in range(size["requests"]):
        new = rng.randint(*size["new_tokens"])
        bodies.append({"task": f"task-{rng.randrange(size['tasks']):02d}", "routing_key": f"user-{i}",
                       "input": " ".join(rng.choices(words, k=rng.randint(3, 12))),
                       "params": {"max_new_tokens": new, "min_new_tokens": new}})
    return bodies


async def _drive(bodies: list[dict], concurrency: int, send: Callable[[dict], Awaitable[int]]) -> dict:
    latencies: list[float] = []
    tokens = 0
    queue = list(enumerate(bodies))

    async def worker() -> None:
        nonlocal tokens
        while queue:
            _, body = queue.pop(0)
            start = time.perf_counter()
            produced = await send(body)
            latencies.append(time.perf_counter() - start)
            tokens += produced

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(bodies), "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "latency_p50_s": statistics.median(latencies),
            "latency_p99_s": percentile(latencies, 0.99)}


def _in_process(settings: ServeSettings, bodies: list[dict], concurrency: int) -> tuple[dict, str]:
    """The workload through the service called directly; the service is released on return."""
    service = PromptmuxService(settings)

    async def direct(body: dict) -> int:
        request = GenerateBody.model_validate(body)
        answers = await service.serve(Call(request.query(), "bench", params=request.params))
        return sum(a.usage.completion_tokens for a in answers.answers)

    try:
        asyncio.run(_drive(bodies[:concurrency], concurrency, direct))  # warm-up
        return asyncio.run(_drive(bodies, concurrency, direct)), str(service.client.engine.device)
    finally:
        service.shutdown()


def run_http_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    import ray
    from ray import serve

    from promptmux.serving.hosting.deployment import PromptmuxDeployment
    from promptmux.serving.hosting.local_cluster import init_ray

    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    base_model = size["base_model"]
    names = [f"task-{t:02d}" for t in range(size["tasks"])]
    registry = bench_registry(base_model, {name: [random.Random(name).randint(8, 32)] for name in names})
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(
        base_model=base_model, device=device, dtype=dtype, max_batch_size=size["max_batch_size"]))
    bodies = _bodies(size)

    engine_side, service_device = _in_process(settings, bodies, size["concurrency"])
    gc.collect()

    port = free_port()
    init_ray(2, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = PromptmuxDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 2})
        serve.run(deployment.bind(settings.replica_args()), name="promptmux-bench", route_prefix="/")

        async def over_http() -> dict:
            limits = httpx.Limits(max_connections=size["concurrency"])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300, limits=limits) as client:
                async def send(body: dict) -> int:
                    response = await client.post("/v1/generate", json=body)
                    response.raise_for_status()
                    return sum(o["usage"]["completion_tokens"] for o in response.json()["outputs"])

                await _drive(bodies[: size["concurrency"]], size["concurrency"], send)  # warm-up
                return await _drive(bodies, size["concurrency"], send)

        http_side = asyncio.run(over_http())
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "http_over_engine": round(http_side["tokens_per_s"] / engine_side["tokens_per_s"], 3),
        "targets": TARGETS,
        "http": http_side,
        "engine": engine_side,
        "config": {**size, "mode": "quick" if quick else "full", "device": service_device, "replicas": 1},
        "machine": machine_report(torch.device(service_device), load_before),
    }
