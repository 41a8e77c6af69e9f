"""What the benchmarks share: throwaway registries of random prompts (of every PEFT method),
side-by-side timing (A B B A ..., after a warm-up, so neither side always runs first), and
percentiles."""

import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from promptmux.core.fields import GenerationParams
from promptmux.methods.catalog import CATALOG, Method
from promptmux.methods.catalog import method as peft_method
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.methods.prompt import Prompt
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec

METHODS: tuple[Method, ...] = tuple(CATALOG)


def random_registry(path: str, base_model: str, tasks: list[tuple[TaskSpec, list[int]]], seed: int,
                    scale: float = 1.0) -> Registry:
    """A registry at `path` of `tasks` (each spec with its versions' prompt lengths), every
    prompt random from `seed`: what the benchmarks and the tests serve."""
    registry = Registry(path)
    fp = fingerprint(load_model(base_model, dtype="float32"))
    generator = torch.Generator().manual_seed(seed)
    for spec, lengths in tasks:
        registry.tasks.create(spec, fp)
        for length in lengths:
            registry.versions.register(spec.name, torch.randn(length, fp.hidden_size, generator=generator) * scale, fp)
    return registry


def bench_registry(
    base_model: str, prompt_lengths: dict[str, list[int]], generation: GenerationParams | None = None
) -> Registry:
    """A registry in a temporary folder: per task, one random version of each length."""
    tasks = [(TaskSpec(name=name, base_model=base_model, generation=generation or GenerationParams()), lengths)
             for name, lengths in prompt_lengths.items()]
    return random_registry(tempfile.mkdtemp(prefix="promptmux-bench-"), base_model, tasks, seed=0, scale=0.5)


def methods_registry(base_model: str, virtual_tokens: int) -> Registry:
    """A registry in a temporary folder with one task per PEFT method (named after it), each
    a random prompt of `virtual_tokens` rows in that method's own form."""
    registry = Registry(tempfile.mkdtemp(prefix="promptmux-bench-methods-"))
    fp = fingerprint(load_model(base_model, dtype="float32"))
    generator = torch.Generator().manual_seed(1)
    for method in METHODS:
        registry.tasks.create(TaskSpec(name=method.replace("_", "-"), base_model=base_model), fp)
        registry.versions.register(method.replace("_", "-"), random_prompt(method, fp, virtual_tokens, generator), fp)
    return registry


def random_prompt(method: Method, fp: BaseModelFingerprint, n: int, generator: torch.Generator) -> Prompt:
    """A random prompt of `method` for the model `fp` describes, as PEFT would store it."""
    return peft_method(method).example(fp, n, lambda *shape: torch.randn(*shape, generator=generator) * 0.5)


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


def fastest(timings: dict[str, list[float]]) -> dict[str, float]:
    """Each side's fastest run: on a shared machine a neighbour only ever slows a run down, so
    the fastest of a few alternated runs is the least disturbed measure of each side."""
    return {name: min(values) for name, values in timings.items()}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
