"""`promptmux bench registry`: what many tasks cost, on a local folder and on an S3 server.

Each size is a registry of N tasks, each with 3 versions, a `production` and a `staging`
alias, and a rollout on 100 of them, written through the Registry API by 8 concurrent
writers (threads, one Registry each). Measured per size and storage:

* `registrations_per_s`: versions registered per second by those 8 writers;
* `list_s`: `promptmux registry list` (the installed command, start-up included);
* a serving view's refresh (`RegistryView`, what every replica runs): the full scan, a
  refresh with nothing changed, and one after alias moves on 10 tasks, in seconds and in
  storage requests (counted by the storage layer); ratios `full_over_unchanged` and
  `full_over_10_changes`;
* `route_p99_ratio`: p99 of `route()` over random tasks at N tasks / at 10 tasks;
* `alias_move_s`: from an alias move to the moment two views refreshing every 2 s (as two
  replicas do) both route the task to the new version.

Once, on the last registry measured (the largest size), with the engine (`--base-model`):

* bytes per resident prompt, as the prompt cache counts them (embedding and pinned KV)
  and as the process's memory grows;
* `hit_3000_over_10`: a cache hit's cost with 3,000 prompts resident / with 10;
* `random_16_over_fixed_16`: a 16-row batch over 16 tasks drawn at random from N (all
  resident) / the same shape over 16 fixed tasks;
* `steps_with_cold_loads_over_quiet`: a running batch's decode step while another thread
  loads cold prompts / without.
"""

import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

from promptmux.core.fields import GenerationParams
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from promptmux.serving.bench.common import medians, percentile, side_by_side
from promptmux.serving.bench.machine import load_average, machine_report
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler
from promptmux.serving.runtime.routing import RegistryView

WRITERS = 8
ROLLOUTS = 100
VIRTUAL_TOKENS = 20
RESIDENT = 3000
REFRESH_S = 2.0
ROUTES = 20000  # route() calls timed per registry
TARGETS = {"full_over_unchanged": 50.0, "route_p99_ratio": {"at_most": 2.0}, "hit_3000_over_10": {"at_most": 1.5},
           "random_16_over_fixed_16": {"at_most": 1.2}}
SIZES = {"quick": [200], "full": [1000, 10000]}


def run_registry_benchmark(quick: bool, sizes: list[int] | None, storages: list[str], base_model: str | None) -> dict:
    load_before = load_average()
    sizes = sizes or SIZES["quick" if quick else "full"]
    base_model = base_model or "bench-random-llama"
    fp = fingerprint(load_model(base_model, dtype="float32"))
    report: dict = {"storage": {}}
    with _s3("s3" in storages) as bucket:
        roots = {"local": lambda: tempfile.mkdtemp(prefix="promptmux-bench-"), "s3": bucket}
        for name in storages:
            small = _measure(*_seed(roots[name](), 10, base_model, fp), route_only=True)
            for size in sizes:
                registry, registrations_per_s = _seed(roots[name](), size, base_model, fp)
                figures = _measure(registry, registrations_per_s)
                figures["route_p99_ratio"] = round(figures["route_p99_s"] / small["route_p99_s"], 3)
                report["storage"].setdefault(name, {})[str(size)] = figures
        report["prompts"] = _prompt_residency(registry, base_model, max(sizes))
    headline = report["storage"][storages[0]][str(max(sizes))]
    return {
        **{ratio: headline[ratio] for ratio in ("full_over_unchanged", "route_p99_ratio")},
        **{ratio: report["prompts"][ratio] for ratio in ("hit_3000_over_10", "random_16_over_fixed_16")},
        "targets": TARGETS, **report,
        "config": {"mode": "quick" if quick else "full", "sizes": sizes, "base_model": base_model, "device": "cpu",
                   "writers": WRITERS, "virtual_tokens": VIRTUAL_TOKENS, "storages": storages,
                   "s3": "moto server on 127.0.0.1" if "s3" in storages else None},
        "machine": machine_report(torch.device("cpu"), load_before),
    }


@contextmanager
def _s3(wanted: bool) -> Iterator[Callable[[], str] | None]:
    if not wanted:
        yield None
        return
    from promptmux.serving.bench.s3_server import new_bucket, s3_server

    with s3_server():
        yield lambda: f"{new_bucket()}/registry"


def _seed(uri: str, tasks: int, base_model: str, fp: BaseModelFingerprint) -> tuple[Registry, float]:
    """N tasks of 3 versions with aliases, and rollouts on the first 100, by 8 writer threads."""
    names = [f"task-{i:05d}" for i in range(tasks)]
    registry = Registry(uri)
    writers = [Registry(uri) for _ in range(WRITERS)]
    generator = torch.Generator().manual_seed(tasks)
    tensors = [torch.randn(VIRTUAL_TOKENS, fp.hidden_size, generator=generator) * 0.5 for _ in range(3 * WRITERS)]

    def each(work: Callable[[Registry, int, str], object]) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(lambda i: work(writers[i % WRITERS], i, names[i]), range(tasks)))
        return time.perf_counter() - start

    each(lambda reg, i, name: reg.tasks.create(TaskSpec(name=name, base_model=base_model), fp))
    seconds = each(lambda reg, i, name: [reg.versions.register(name, tensors[(i + v) % len(tensors)], fp) for v in range(3)])
    each(lambda reg, i, name: (reg.aliases.set(name, "production", 2), reg.aliases.set(name, "staging", 3)))
    each(lambda reg, i, name: i < ROLLOUTS and reg.rollouts.set(name, RolloutSpec(
        variants=[RolloutVariant(version=2, weight=90), RolloutVariant(version=3, weight=10)])))
    return registry, 3 * tasks / seconds


def _requests(view: RegistryView, action: Callable[[], object]) -> tuple[float, int]:
    """Seconds and storage requests of one `action` of the view."""
    before = sum(view.registry.storage.requests.values())
    start = time.perf_counter()
    action()
    return time.perf_counter() - start, sum(view.registry.storage.requests.values()) - before


def _measure(registry: Registry, registrations_per_s: float, route_only: bool = False) -> dict:
    names = registry.tasks.names()
    view = RegistryView(Registry(registry.uri), full_scan_interval_s=3600)
    full_s, full_requests = _requests(view, view.refresh)
    rng = random.Random(0)
    routes = []
    for _ in range(ROUTES):
        task = rng.choice(names)
        start = time.perf_counter()
        view.route(task, routing_key=str(rng.random()))
        routes.append(time.perf_counter() - start)
    figures: dict = {"route_p99_s": percentile(routes, 0.99)}
    if route_only:
        return figures
    unchanged = [_requests(view, view.refresh) for _ in range(20)]
    changed = []
    for round_ in range(5):
        for task in rng.sample(names, 10):
            registry.aliases.set(task, "staging", 1 + round_ % 3)
        changed.append(_requests(view, view.refresh))
    unchanged_s, changed_s = statistics.median(t for t, _ in unchanged), statistics.median(t for t, _ in changed)
    return {
        **figures,
        "registrations_per_s": round(registrations_per_s, 1),
        "list_s": _list_seconds(registry.uri),
        "refresh_full": {"s": full_s, "requests": full_requests},
        "refresh_unchanged": {"s": unchanged_s, "requests": max(n for _, n in unchanged)},
        "refresh_10_changes": {"s": changed_s, "requests": max(n for _, n in changed)},
        "full_over_unchanged": round(full_s / unchanged_s, 1),
        "full_over_10_changes": round(full_s / changed_s, 1),
        "alias_move_s": _alias_move_seconds(registry, rng.choice(names)),
    }


def _list_seconds(uri: str) -> float:
    command = [str(Path(sys.executable).parent / "promptmux"), "registry", "list", "--registry", uri, "--json"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return round(time.perf_counter() - start, 3)


def _alias_move_seconds(registry: Registry, task: str) -> float:
    """From an alias move until two views, each refreshing every 2 s like a replica, route to the new version."""
    views = [RegistryView(Registry(registry.uri)) for _ in range(2)]
    stop = threading.Event()

    def replica(view: RegistryView) -> None:
        view.refresh()
        while not stop.wait(REFRESH_S):
            view.refresh()

    threads = [threading.Thread(target=replica, args=(view,), daemon=True) for view in views]
    for thread in threads:
        thread.start()
    while any(view.cursor is None for view in views):
        time.sleep(0.01)
    target = 1 if registry.aliases.of(task)["production"] != 1 else 2
    moved = time.perf_counter()
    registry.aliases.set(task, "production", target)
    while not all(view.route(task, alias="production").manifest.version == target for view in views):
        time.sleep(0.005)
    elapsed = time.perf_counter() - moved
    stop.set()
    for thread in threads:
        thread.join()
    return round(elapsed, 3)


def _prompt_residency(registry: Registry, base_model: str, tasks: int) -> dict:
    """The prompt cache and the engine with thousands of prompts resident."""
    engine = Engine(EngineConfig(base_model=base_model, max_batch_size=16, prompt_cache_mb=8192), registry.versions)
    names = registry.tasks.names()
    rng = random.Random(1)
    resident = rng.sample(names, min(RESIDENT, len(names)))
    manifests = [registry.versions.get(name, 2) for name in resident]
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randint(3, 259, (16,), generator=generator).tolist() for _ in range(16)]
    rss_before = psutil.Process().memory_info().rss
    for start in range(0, len(manifests), 16):  # each serves once: loaded, and its KV pinned
        chunk = manifests[start:start + 16]
        _run_batch(engine, [GenerationRow(engine.prompt(m), x, GenerationParams(max_new_tokens=1))
                            for m, x in zip(chunk, inputs)])
    stats = engine.prompts.stats()
    rss_per_prompt = (psutil.Process().memory_info().rss - rss_before) / len(resident)

    def hits(pool: list) -> Callable[[], None]:
        picks = [rng.choice(pool) for _ in range(20000)]
        return lambda: [engine.prompts.resident(m) for m in picks]

    hit_timings = side_by_side({"hit_10": hits(manifests[:10]), "hit_3000": hits(manifests)}, 5, engine.device)
    params = GenerationParams(max_new_tokens=8, min_new_tokens=8)

    def batch(draw: Callable[[], list]) -> Callable[[], None]:
        def run() -> None:
            rows = [GenerationRow(engine.prompt(m), x, params) for m, x in zip(draw(), inputs)]
            _run_batch(engine, rows)
        return run

    fixed = manifests[:16]
    batch_timings = side_by_side({"fixed_16": batch(lambda: fixed),
                                  "random_16": batch(lambda: rng.sample(manifests, 16))}, 7, engine.device)
    median = medians({**hit_timings, **batch_timings})
    cold = [registry.versions.get(name, 1) for name in names[:2000]]
    steps = _steps_beside_cold_loads(engine, fixed, inputs, cold)
    return {
        "resident": stats.entries, "cache_bytes_per_prompt": stats.bytes // stats.entries,
        "rss_bytes_per_prompt": int(rss_per_prompt),
        "hit_3000_over_10": round(median["hit_3000"] / median["hit_10"], 3),
        "random_16_over_fixed_16": round(median["random_16"] / median["fixed_16"], 3),
        "drawn_from_tasks": tasks, **steps, "median_s": median,
    }


def _run_batch(engine: Engine, rows: list[GenerationRow], on_step: Callable[[float], None] | None = None) -> None:
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    for row in rows:
        scheduler.submit(row)
    while scheduler.has_work():
        start = time.perf_counter()
        scheduler.step()
        if on_step:
            on_step(time.perf_counter() - start)


def _steps_beside_cold_loads(engine: Engine, fixed: list, inputs: list[list[int]], cold: list) -> dict:
    """Decode-step seconds of a running 16-row batch, quiet and while a thread loads cold prompts."""
    params = GenerationParams(max_new_tokens=64, min_new_tokens=64)

    def rows() -> list[GenerationRow]:
        return [GenerationRow(engine.prompt(m), x, params) for m, x in zip(fixed, inputs)]

    quiet: list[float] = []
    _run_batch(engine, rows(), quiet.append)
    loading: list[float] = []
    stop = threading.Event()

    def load() -> None:
        for manifest in cold:
            if stop.is_set():
                return
            engine.prompt(manifest)

    loader = threading.Thread(target=load, daemon=True)
    misses = engine.prompts.misses
    loader.start()
    _run_batch(engine, rows(), loading.append)
    stop.set()
    loader.join()
    return {"step_quiet_median_s": statistics.median(quiet), "step_with_cold_loads_median_s": statistics.median(loading),
            "step_with_cold_loads_max_s": max(loading), "cold_loads_during_batch": engine.prompts.misses - misses,
            "steps_with_cold_loads_over_quiet": round(statistics.median(loading) / statistics.median(quiet), 3)}
