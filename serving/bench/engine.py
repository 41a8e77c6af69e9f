"""`promptmux bench engine`: the engine's ratios, measured side by side in one run.

* `engine_over_hf`, `step_over_bound`, `kv_bytes_per_token` and the step's profile: the decode
  step beside bare Hugging Face and the machine's bound (`decode.py`);
* `mixed_over_single`: throughput of B rows spread over T tasks / the same B rows all
  on one task (what mixing tasks costs);
* `mixed_methods_over_single`: throughput of B rows spread over the four PEFT methods
  (prompt tuning, P-tuning, multitask prompt tuning, prefix tuning) / the same B rows on
  one prompt-tuned task (what mixing methods costs), with each method's pinned-KV bytes
  per task;
* `engine_over_peft`: the engine on the mixed batch / PEFT as users run it today, one
  adapter at a time with a sub-batch per task;
* `pinned_kv_speedup`: classification throughput with each prompt's KV precomputed /
  recomputing the virtual tokens every request;
* `busy_over_quiet`: mixed-batch throughput beside another process that keeps one core
  busy / on the quiet machine (a shared node; on 2 cores, half is the fair share).

Each pair is timed alternately (A B B A ...), after a warm-up, and each side's fastest
run is compared (`common.fastest`).
"""

import time
import warnings
from collections.abc import Callable

import torch
from peft import PeftModel

from promptmux.core.fields import GenerationParams
from promptmux.models.loading import load_model
from promptmux.registry import Registry
from promptmux.serving.bench.common import METHODS, bench_registry, fastest, methods_registry, side_by_side, timed
from promptmux.serving.bench.decode import decode_figures
from promptmux.serving.bench.machine import busy_neighbour, load_average, machine_report, workload
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine

ADAPT_S = 3.0
TARGETS = {"engine_over_hf": 1.5, "engine_over_hf_batch1": 1.0, "step_over_bound": 0.5,
           "kv_bytes_per_token": {"at_most": 1.1}, "mixed_over_single": 0.95, "mixed_methods_over_single": 0.9, "engine_over_peft": 1.8, "pinned_kv_speedup": 2.5,
           "busy_over_quiet": 0.5}
SIZES = {
    "quick": {"base_model": "bench-random-llama", "tasks": 16, "batch": 16, "new_tokens": 8, "input_tokens": 16,
              "virtual_tokens": 20, "cls_virtual_tokens": 100, "cls_input_tokens": 32, "repeats": 3,
              "decode_tokens": 32, "decode_input_tokens": 80},
    "full": {"base_model": "bench-random-llama", "tasks": 16, "batch": 16, "new_tokens": 32, "input_tokens": 32,
             "virtual_tokens": 20, "cls_virtual_tokens": 100, "cls_input_tokens": 32, "repeats": 7,
             "decode_tokens": 128, "decode_input_tokens": 80},
}


def run_engine_benchmark(quick: bool, device: str = "auto", dtype: str = "auto", base_model: str | None = None) -> dict:
    warnings.filterwarnings("ignore", message="Position ids are not supported")
    load_before = load_average()
    size = workload(SIZES, quick, base_model)
    base_model, tasks, batch, new = size["base_model"], size["tasks"], size["batch"], size["new_tokens"]
    config = EngineConfig(base_model=base_model, device=device, dtype=dtype, max_batch_size=batch)
    names = [f"task-{t:02d}" for t in range(tasks)]
    registry = bench_registry(base_model, {name: [size["virtual_tokens"], size["cls_virtual_tokens"]] for name in names})
    pinned = Engine(config, registry.versions)
    recompute = Engine(config.model_copy(update={"pinned_kv": False}), registry.versions)
    dev = pinned.device
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(3, 259, (size["input_tokens"],), generator=generator).tolist() for _ in range(batch)]
    cls_inputs = [torch.randint(3, 259, (size["cls_input_tokens"],), generator=generator).tolist() for _ in range(batch)]
    row_tasks = [names[b % tasks] for b in range(batch)]
    params = GenerationParams(max_new_tokens=new, min_new_tokens=new)
    mixed = [GenerationRow(pinned.prompt(registry.versions.get(t, 1)), x, params) for t, x in zip(row_tasks, inputs)]
    single = [GenerationRow(mixed[0].prompt, x, params) for x in inputs]
    by_method = methods_registry(base_model, size["virtual_tokens"])
    methods_engine = Engine(config, by_method.versions)
    method_prompts = {m: methods_engine.prompt(by_method.versions.latest(m.replace("_", "-"))) for m in METHODS}
    mixed_methods = [GenerationRow(method_prompts[METHODS[b % len(METHODS)]], x, params) for b, x in enumerate(inputs)]
    one_method = [GenerationRow(method_prompts["prompt_tuning"], x, params) for x in inputs]

    def classify(engine: Engine) -> Callable[[], object]:
        verbalizers = engine.inputs.verbalizers({"0": "0", "1": "1"})
        rows = [ClassificationRow(engine.prompt(registry.versions.get(t, 2)), x, verbalizers)
                for t, x in zip(row_tasks, cls_inputs)]
        return lambda: engine.classify(rows)

    # what is compared must compute the same thing: the two KV paths give the same labels
    same_labels = [o.label for o in classify(pinned)()] == [o.label for o in classify(recompute)()]
    repeats = size["repeats"]
    timings = {
        **side_by_side({"mixed": lambda: generate(pinned, mixed), "single": lambda: generate(pinned, single)}, repeats, dev),
        **side_by_side({"mixed_methods": lambda: generate(methods_engine, mixed_methods),
                        "one_method": lambda: generate(methods_engine, one_method)}, repeats, dev),
        **side_by_side({"engine": lambda: generate(pinned, mixed),
                        "peft": peft_per_task(registry, config, row_tasks, inputs, new)}, repeats, dev),
        **side_by_side({"pinned_kv": classify(pinned), "recompute": classify(recompute)}, repeats, dev),
    }
    threads = {"quiet": pinned.threads.threads if pinned.threads else None}
    timings["mixed_beside_busy"] = beside_busy_neighbour(lambda: generate(pinned, mixed), repeats, dev)
    threads["beside_busy"] = pinned.threads.threads if pinned.threads else None
    best = fastest(timings)
    flat = Engine(config.model_copy(update={"kv_pool": False}), registry.versions)
    decode = decode_figures(pinned, flat, registry, names[0], size)
    targets = TARGETS if pinned.kv_pool is not None else {k: v for k, v in TARGETS.items() if k not in decode}
    return {
        **decode,
        "mixed_over_single": round(best["single"] / best["mixed"], 3),
        "mixed_methods_over_single": round(best["one_method"] / best["mixed_methods"], 3),
        "pinned_kv_bytes_per_task": {method: prompt.nbytes for method, prompt in method_prompts.items()},
        "engine_over_peft": round(best["peft"] / best["engine"], 3),
        "pinned_kv_speedup": round(best["recompute"] / best["pinned_kv"], 3),
        "pinned_kv_labels_equal_recompute": same_labels,
        "busy_over_quiet": round(best["mixed"] / best["mixed_beside_busy"], 3),
        "targets": targets,
        "config": {**size, "mode": "quick" if quick else "full", "device": str(dev),
                   "dtype": str(pinned.model.dtype).removeprefix("torch."),
                   "parameters": pinned.parameter_count, "kv_pool": pinned.kv_pool is not None,
                   "engine_threads": threads},
        "timings_s": timings,
        "fastest_s": best,
        "throughput_tokens_per_s": {name: batch * new / best[name]
                                    for name in ("mixed", "single", "engine", "peft", "mixed_beside_busy")},
        "machine": machine_report(dev, load_before),
    }


def peft_per_task(
    registry: Registry, config: EngineConfig, row_tasks: list[str], inputs: list[list[int]], new: int
) -> Callable[[], None]:
    """PEFT as users run it today: one adapter at a time, a sub-batch per task."""
    names = sorted(set(row_tasks))
    device = config.resolved_device()
    peft = PeftModel.from_pretrained(load_model(config.base_model, config.resolved_dtype(), device),
                                     registry.versions.uri(names[0], 1), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(registry.versions.uri(name, 1), adapter_name=name)
    peft.eval()

    def run() -> None:
        for name in names:
            peft.set_adapter(name)
            tensor = torch.tensor([x for t, x in zip(row_tasks, inputs) if t == name], device=device)
            with torch.no_grad():
                peft.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)

    return run


def beside_busy_neighbour(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds per run of `fn` while another process keeps one core busy. The engine is given
    `ADAPT_S` of work first: it measures what the other processes use and sets its threads."""
    with busy_neighbour():
        started = time.perf_counter()
        while time.perf_counter() - started < ADAPT_S:
            fn()
        return [timed(fn, device) for _ in range(repeats)]
