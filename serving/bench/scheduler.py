"""`promptmux bench scheduler`: continuous vs static batching on the same workload.

Mixed tasks, max_new_tokens drawn uniformly from 8..128 (EOS suppressed so each request
generates exactly that many), Poisson arrivals fast enough to keep a queue; the same
trace replayed through the scheduler in continuous and in static mode, at the same
maximum batch size, on the same model, in one run: each mode `repeats` times, alternating
(C S S C ...), and each mode's fastest replay compared (a replay lasts seconds, and a noisy
neighbour slows one of them, never speeds one up).
"""

import random
import statistics
import time

from promptmux.core.fields import GenerationParams
from promptmux.serving.bench.common import bench_registry, percentile
from promptmux.serving.bench.machine import load_average, machine_report, workload
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler
from promptmux.serving.engine.sequence import Sequence

TARGETS = {"continuous_over_static": 1.5}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "requests": 96, "tasks": 8, "max_batch_size": 16,
              "rate_per_s": 50.0, "new_tokens": [8, 128], "repeats": 2},
    "full": {"base_model": "bench-random-llama", "requests": 192, "tasks": 16, "max_batch_size": 16,
             "rate_per_s": 50.0, "new_tokens": [8, 128], "repeats": 2},
}


def _replay(engine: Engine, trace: list[tuple[float, GenerationRow]], static: bool) -> dict:
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(trace)}), engine, static=static)
    start = time.perf_counter()
    pending = list(trace)
    submitted: list[tuple[float, Sequence]] = []
    while pending or scheduler.has_work():
        now = time.perf_counter() - start
        while pending and pending[0][0] <= now:
            arrival, row = pending.pop(0)
            submitted.append((start + arrival, scheduler.submit(row)))
        if scheduler.has_work():
            scheduler.step()
        elif pending:
            time.sleep(max(0.0, pending[0][0] - now))
    end = max(state.finished_at for _, state in submitted)
    latency = sorted(state.finished_at - arrival for arrival, state in submitted)
    ttft = sorted(state.first_token_at - arrival for arrival, state in submitted)
    tokens = sum(len(state.generated) for _, state in submitted)
    return {
        "tokens": tokens,
        "makespan_s": end - start,
        "tokens_per_s": tokens / (end - start),
        "latency_p50_s": statistics.median(latency),
        "latency_p99_s": percentile(latency, 0.99),
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": percentile(ttft, 0.99),
    }


def run_scheduler_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    base_model = size["base_model"]
    config = EngineConfig(base_model=base_model, device=device, dtype=dtype, max_batch_size=size["max_batch_size"])
    names = [f"task-{t:02d}" for t in range(size["tasks"])]
    registry = bench_registry(base_model, {name: [random.Random(name).randint(8, 32)] for name in names})
    engine = Engine(config, registry.versions)
    rng = random.Random(0)
    prompts = {name: engine.prompt(registry.versions.latest(name)) for name in names}
    low, high = size["new_tokens"]
    trace, clock = [], 0.0
    for _ in range(size["requests"]):
        clock += rng.expovariate(size["rate_per_s"])
        new = rng.randint(low, high)
        ids = [rng.randint(3, 258) for _ in range(rng.randint(8, 32))]
        row = GenerationRow(prompts[rng.choice(names)], ids, GenerationParams(max_new_tokens=new, min_new_tokens=new))
        trace.append((clock, row))
    _replay(engine, trace[: size["max_batch_size"]], static=False)  # warm-up
    replays: dict[str, list[dict]] = {"continuous": [], "static": []}
    order = list(replays)
    for _ in range(size["repeats"]):
        for mode in order:
            replays[mode].append(_replay(engine, trace, static=mode == "static"))
        order.reverse()
    continuous, static = (max(replays[mode], key=lambda r: r["tokens_per_s"]) for mode in ("continuous", "static"))
    return {
        "continuous_over_static": round(continuous["tokens_per_s"] / static["tokens_per_s"], 3),
        "targets": TARGETS,
        "continuous": continuous,
        "static": static,
        "config": {**size, "mode": "quick" if quick else "full", "device": str(engine.device),
                   "dtype": str(engine.model.dtype).removeprefix("torch.")},
        "machine": machine_report(engine.device, load_before),
    }
