"""`promptmux bench fairness`: one tenant floods, another sends a trickle; does the trickle
still get answered in time?

Two tenants share one engine, with tasks of the same prompt length and the same inputs;
each request's output length is drawn from one distribution for both (so rows end at
different steps and slots free up often, as in real traffic), and the engine admits a
newcomer as soon as one slot is free (a latency-minded `admit_fraction`).
First the engine's capacity is measured (requests per second with the batch kept full).
Then tenant B sends 10% of that capacity, open loop, three ways, in one run:
* alone;
* while tenant A floods at 10x capacity, admission first come, first served (`fifo`);
* the same flood, admission fair across tenants (`fair`, deficit round robin by weight).
A's concurrency quota lets it fill the engine and queue behind it, and refuses the rest
with 429. The report: B's p99 latency in each case and `fair_p99_over_alone` (target ≤ 2)
beside `fifo_p99_over_alone`; the 429s each tenant got (A: many; B: none).
Everything runs in-process through the runtime's one call (`PromptmuxService.serve`), so
quotas, scope and admission are the served ones.

B's latency beside the flood has two parts: waiting for a decode slot, which admission
order decides, and decoding in a fuller batch, which no order can undo. On a CPU a decode
step of many rows costs several times one row's (on a GPU nearly the same), so the batch
is 4 rows: with 8, on the 2-core machine of `docs/benchmarks.md`, fair admission still
halved B's p99 against first come, first served, but the fuller batch alone made it 2.4x
B's p99 alone.
"""

import asyncio
import random
import time

from promptmux.core.errors import RateLimited
from promptmux.registry import Registry
from promptmux.serving.bench.common import bench_registry, percentile
from promptmux.serving.bench.machine import load_average, machine_report, workload
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.runtime.requests import Call, Query
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings
from promptmux.serving.runtime.tenants import Caller

TARGETS = {"fair_p99_over_alone": {"at_most": 2.0}}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "new_tokens": [8, 24], "max_batch_size": 4, "b_requests": 16,
              "calibration": 32},
    "full": {"base_model": "bench-random-llama", "new_tokens": [8, 40], "max_batch_size": 4, "b_requests": 60,
             "calibration": 96},
}
PROMPT_TOKENS = 16
TEXT = "a tenant's request of a fixed length"


def _tenants(registry: Registry, max_batch_size: int) -> dict[str, Caller]:
    """A may keep two batches in flight (running and queued); B is never limited."""
    a, _ = registry.tenants.add("tenant-a", ["task-a"], concurrency=2 * max_batch_size)
    b, _ = registry.tenants.add("tenant-b", ["task-b"])
    return {"a": Caller(a), "b": Caller(b)}


class Lengths:
    """Output lengths drawn from one seeded distribution, whoever asks."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high, self.rng = low, high, random.Random(0)

    def call(self, task: str, caller: Caller) -> Call:
        n = self.rng.randint(self.low, self.high)
        return Call(Query(task, [TEXT]), "bench", params=ParamsOverride(max_new_tokens=n, min_new_tokens=n), caller=caller)


async def _capacity(service: PromptmuxService, lengths: Lengths, caller: Caller, requests: int) -> float:
    """Requests per second with every request submitted at once (the engine kept busy)."""
    start = time.perf_counter()
    await asyncio.gather(*(service.serve(lengths.call("task-b", caller)) for _ in range(requests)))
    return requests / (time.perf_counter() - start)


async def _open_loop(service: PromptmuxService, lengths: Lengths, caller: Caller, task: str, rate: float, count: int,
                     latencies: list[float], refused: list[int]) -> None:
    """`count` requests at `rate` per second, each on its own, not waiting for the previous one."""
    async def one() -> None:
        start = time.perf_counter()
        try:
            await service.serve(lengths.call(task, caller))
        except RateLimited:
            refused[0] += 1
            return
        latencies.append(time.perf_counter() - start)

    sent = []
    for _ in range(count):
        sent.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*sent)


async def _scenario(service: PromptmuxService, lengths: Lengths, callers: dict[str, Caller], capacity: float,
                    b_requests: int, flood: bool) -> dict:
    b_rate = 0.1 * capacity
    seconds = b_requests / b_rate
    latencies: dict[str, list[float]] = {"a": [], "b": []}
    refused = {"a": [0], "b": [0]}
    runs = [_open_loop(service, lengths, callers["b"], "task-b", b_rate, b_requests, latencies["b"], refused["b"])]
    if flood:
        a_rate = 10 * capacity
        runs.append(_open_loop(service, lengths, callers["a"], "task-a", a_rate, int(a_rate * seconds), latencies["a"],
                               refused["a"]))
    await asyncio.gather(*runs)
    return {"b_p50_s": percentile(latencies["b"], 0.5), "b_p99_s": percentile(latencies["b"], 0.99),
            "b_served": len(latencies["b"]), "b_429": refused["b"][0], "a_served": len(latencies["a"]),
            "a_429": refused["a"][0]}


def run_fairness_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    registry = bench_registry(size["base_model"], {"task-a": [PROMPT_TOKENS], "task-b": [PROMPT_TOKENS]})
    callers = _tenants(registry, size["max_batch_size"])
    batch = size["max_batch_size"]
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(
        base_model=size["base_model"], device=device, dtype=dtype, max_batch_size=batch, admit_fraction=1 / batch))
    service = PromptmuxService(settings)
    scheduler, lengths = service.client.core.scheduler, Lengths(*size["new_tokens"])
    try:
        capacity = asyncio.run(_capacity(service, lengths, callers["b"], size["calibration"] // 4))  # warm-up
        capacity = asyncio.run(_capacity(service, lengths, callers["b"], size["calibration"]))
        report = {"alone": asyncio.run(_scenario(service, lengths, callers, capacity, size["b_requests"], flood=False))}
        for mode in ("fifo", "fair"):
            scheduler.waiting.fair = mode == "fair"  # between runs: nothing is waiting
            report[mode] = asyncio.run(_scenario(service, lengths, callers, capacity, size["b_requests"], flood=True))
        device_name = service.client.engine.device
    finally:
        service.shutdown()
    alone = report["alone"]["b_p99_s"]
    return {
        "config": {"mode": "quick" if quick else "full", **size, "device": str(device_name),
                   "capacity_requests_per_s": round(capacity, 2), "b_rate_per_s": round(0.1 * capacity, 2),
                   "a_rate_per_s": round(10 * capacity, 2), "a_concurrency": 2 * size["max_batch_size"]},
        **report,
        "fair_p99_over_alone": report["fair"]["b_p99_s"] / alone,
        "fifo_p99_over_alone": report["fifo"]["b_p99_s"] / alone,
        "targets": TARGETS,
        "machine": machine_report(device_name, load_before),
    }
