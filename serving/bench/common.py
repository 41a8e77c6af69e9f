"""What the benchmarks share: a throwaway registry of random prompts, side-by-side timing
(A B B A ..., after a warm-up, so neither side always runs first), and percentiles."""

import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from promptmux.registry import Registry, TaskSpec
from promptmux.registry.base_models import fingerprint, load_model
from promptmux.registry.schemas import GenerationParams


def bench_registry(
    base_model: str, prompt_lengths: dict[str, list[int]], generation: GenerationParams | None = None
) -> Registry:
    """A registry in a temporary folder: per task, one random version of each length."""
    registry = Registry(tempfile.mkdtemp(prefix="promptmux-bench-"))
    fp = fingerprint(load_model(base_model, dtype="float32"))
    generator = torch.Generator().manual_seed(0)
    for name, lengths in prompt_lengths.items():
        registry.create_task(TaskSpec(name=name, base_model=base_model, generation=generation or GenerationParams()), fp)
        for length in lengths:
            registry.register(name, torch.randn(length, fp.hidden_size, generator=generator) * 0.5, fp)
    return registry


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def side_by_side(pair: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per run of each side, `repeats` times, alternating A B B A ... after one warm-up each."""
    for fn in pair.values():
        fn()
    timings: dict[str, list[float]] = {name: [] for name in pair}
    order = list(pair)
    for _ in range(repeats):
        for name in order:
            timings[name].append(timed(pair[name], device))
        order.reverse()
    return timings


def medians(timings: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in timings.items()}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
