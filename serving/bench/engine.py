"""`promptmux bench engine`: the engine's three ratios, measured side by side in one run.

* `mixed_over_single`: throughput of B rows spread over T tasks / the same B rows all
  on one task (what mixing tasks costs);
* `engine_over_peft`: the engine on the mixed batch / PEFT as users run it today, one
  adapter at a time with a sub-batch per task;
* `pinned_kv_speedup`: classification throughput with each prompt's KV precomputed /
  recomputing the virtual tokens every request.

Each pair is timed alternately (A B B A ...), after a warm-up, and the medians are compared.
"""

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from peft import PeftModel

from promptmux.registry import Registry, TaskSpec
from promptmux.registry.base_models import fingerprint, load_model
from promptmux.registry.schemas import GenerationParams
from promptmux.serving.bench.machine import load_average, machine_report, workload
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.runner import Engine

TARGETS = {"mixed_over_single": 0.95, "engine_over_peft": 1.8, "pinned_kv_speedup": 2.5}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "tasks": 16, "batch": 16, "new_tokens": 8, "input_tokens": 16,
              "virtual_tokens": 20, "cls_virtual_tokens": 100, "cls_input_tokens": 32, "repeats": 3},
    "full": {"base_model": "bench-random-llama", "tasks": 16, "batch": 16, "new_tokens": 32, "input_tokens": 32,
             "virtual_tokens": 20, "cls_virtual_tokens": 100, "cls_input_tokens": 32, "repeats": 7},
}


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _side_by_side(pair: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    for fn in pair.values():
        fn()
    timings: dict[str, list[float]] = {name: [] for name in pair}
    order = list(pair)
    for _ in range(repeats):
        for name in order:
            timings[name].append(_timed(pair[name], device))
        order.reverse()  # ABBA: neither side always runs first
    return timings


def run_engine_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    warnings.filterwarnings("ignore", message="Position ids are not supported")
    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    base_model, tasks, batch = size["base_model"], size["tasks"], size["batch"]
    config = EngineConfig(base_model=base_model, device=device, dtype=dtype, max_batch_size=batch)
    registry = Registry(tempfile.mkdtemp(prefix="promptmux-bench-"))
    fp = fingerprint(load_model(base_model, dtype="float32"))
    generator = torch.Generator().manual_seed(0)
    names = [f"task-{t:02d}" for t in range(tasks)]
    for name in names:
        registry.create_task(TaskSpec(name=name, base_model=base_model), fp)
        registry.register(name, torch.randn(size["virtual_tokens"], fp.hidden_size, generator=generator) * 0.5, fp)
        registry.register(name, torch.randn(size["cls_virtual_tokens"], fp.hidden_size, generator=generator) * 0.5, fp)
    pinned = Engine(config, registry)
    recompute = Engine(config.model_copy(update={"pinned_kv": False}), registry)
    dev = pinned.device

    def ids(length: int) -> list[int]:
        return torch.randint(3, 259, (length,), generator=generator).tolist()

    new = size["new_tokens"]
    params = GenerationParams(max_new_tokens=new, min_new_tokens=new)
    inputs = [ids(size["input_tokens"]) for _ in range(batch)]
    row_tasks = [names[b % tasks] for b in range(batch)]
    mixed = [GenerationRow(pinned.prompt(registry.get_version(t, 1)), x, params) for t, x in zip(row_tasks, inputs)]
    single = [GenerationRow(mixed[0].prompt, x, params) for x in inputs]

    peft = PeftModel.from_pretrained(load_model(base_model, config.resolved_dtype(), str(dev)),
                                     registry.version_uri(names[0], 1), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(registry.version_uri(name, 1), adapter_name=name)
    peft.eval()

    def peft_per_task() -> None:
        for name in names:
            rows = [x for t, x in zip(row_tasks, inputs) if t == name]
            if not rows:
                continue
            peft.set_adapter(name)
            tensor = torch.tensor(rows, device=dev)
            with torch.no_grad():
                peft.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)

    cls_inputs = [ids(size["cls_input_tokens"]) for _ in range(batch)]
    labels = {"0": "0", "1": "1"}

    def classify(engine: Engine) -> Callable[[], object]:
        rows = [ClassificationRow(engine.prompt(registry.get_version(t, 2)), x, labels) for t, x in zip(row_tasks, cls_inputs)]
        return lambda: engine.classify(rows)

    repeats = size["repeats"]
    timings = {
        **_side_by_side({"mixed": lambda: pinned.generate(mixed), "single": lambda: pinned.generate(single)}, repeats, dev),
        **_side_by_side({"engine": lambda: pinned.generate(mixed), "peft": peft_per_task}, repeats, dev),
        **_side_by_side({"pinned_kv": classify(pinned), "recompute": classify(recompute)}, repeats, dev),
    }
    median = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "mixed_over_single": round(median["single"] / median["mixed"], 3),
        "engine_over_peft": round(median["peft"] / median["engine"], 3),
        "pinned_kv_speedup": round(median["recompute"] / median["pinned_kv"], 3),
        "targets": TARGETS,
        "config": {**size, "mode": "quick" if quick else "full", "device": str(dev),
                   "dtype": str(pinned.model.dtype).removeprefix("torch."),
                   "parameters": sum(p.numel() for p in pinned.model.parameters())},
        "timings_s": timings,
        "median_s": median,
        "throughput_tokens_per_s": {
            "mixed": batch * new / median["mixed"], "single": batch * new / median["single"],
            "engine": batch * new / median["engine"], "peft": batch * new / median["peft"],
        },
        "machine": machine_report(dev, load_before),
    }
