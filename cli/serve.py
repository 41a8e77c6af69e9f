"""`promptmux generate` (offline batch inference) and `promptmux bench ...`."""

import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import Progress
from rich.table import Table

from promptmux.cli.common import BaseModelOption, RegistryOption, TrustRemoteCode, base_model_of, open_registry
from promptmux.core.errors import PromptmuxError, describe
from promptmux.core.jsonl import jsonl_lines
from promptmux.serving.hosting.ports import check_port
from promptmux.serving.runtime.schemas import TaskRequest
from promptmux.tasks.progress import console, err_console, status

DeviceOption = Annotated[str, typer.Option(help="auto, cuda or cpu")]
DtypeOption = Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32")]
PinnedOption = Annotated[bool, typer.Option("--pinned-kv/--no-pinned-kv", help="reuse each prompt's precomputed KV")]
KvCacheOption = Annotated[float | None, typer.Option(
    "--kv-cache-mb", min=1, help="memory of the KV pool running rows live in, allocated once at start-up; it bounds the "
    "tokens in flight [default: room for 65,536 tokens]")]


def read_requests(path: Path) -> list[TaskRequest]:
    """Parse a JSONL file of requests, refusing the whole file on the first bad line."""
    requests = []
    for number, line in jsonl_lines(path):
        try:
            requests.append(TaskRequest.model_validate_json(line))
        except ValidationError as exc:
            problems = describe(exc.errors(), "line")
            raise PromptmuxError(f"{path} line {number}: {problems}") from exc
    if not requests:
        raise PromptmuxError(f"{path} holds no requests")
    return requests


def generate(
    input_path: Annotated[Path, typer.Option("--input", help="JSONL: {task, input, version?, alias?, params?} per line")],
    output_path: Annotated[Path, typer.Option("--output", help="JSONL results, one per input line, same order")],
    base_model: BaseModelOption = None,
    registry: RegistryOption = "",
    batch_size: Annotated[int, typer.Option(min=1, help="rows per mixed-task batch")] = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    pinned_kv: PinnedOption = True,
    kv_cache_mb: KvCacheOption = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Offline batch inference: run a JSONL of requests of many tasks in mixed batches."""
    from promptmux.models.loading import check_base_model
    from promptmux.serving.engine.client import EngineClient
    from promptmux.serving.engine.config import EngineConfig
    from promptmux.serving.runtime.offline_runner import OfflineRunner

    requests = read_requests(input_path)
    reg = open_registry(registry)
    model_id = base_model_of(reg, base_model)
    check_base_model(model_id)
    config = EngineConfig.model_validate({
        "base_model": model_id, "device": device, "dtype": dtype, "pinned_kv": pinned_kv,
        "max_batch_size": batch_size, "trust_remote_code": trust_remote_code, "kv_cache_mb": kv_cache_mb,
    })
    with status(err_console, f"loading {model_id}"):
        client = EngineClient(config, reg.versions, serving=False)
    runner = OfflineRunner(client, reg)
    failed = 0
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w") as out, Progress(console=console, transient=True) as progress:
        bar = progress.add_task("generating", total=len(requests))
        for start in range(0, len(requests), batch_size):
            for result in runner.run(requests[start: start + batch_size]):
                failed += result.error is not None
                out.write(result.model_dump_json(exclude_none=True) + "\n")
            progress.advance(bar, min(batch_size, len(requests) - start))
    console.print(f"wrote {len(requests)} results to {output_path} ({failed} failed)")
    if failed:
        raise typer.Exit(1)


def serve_command(
    base_model: BaseModelOption = None,
    registry: RegistryOption = "",
    host: Annotated[str, typer.Option(help="address the HTTP proxy listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="Serve replicas, each holding the base model once")] = 1,
    replica_cpus: Annotated[float, typer.Option(min=0.01, help="CPUs reserved per replica")] = 0.5,
    replica_gpus: Annotated[float | None, typer.Option(min=0, help="GPUs per replica [default: 1 where CUDA is "
                                                       "present and --device is not cpu, else 0]")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    pinned_kv: PinnedOption = True,
    kv_cache_mb: KvCacheOption = None,
    max_batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="the most tokens any request may ask for [default: 1024]")
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(min=1, help="positions a request may use (virtual + input + new tokens) [default: "
                                 "the model's max_position_embeddings; past a learned position table, clamped to it]")
    ] = None,
    refresh_interval: Annotated[float, typer.Option(min=0.1, help="seconds between registry refreshes")] = 2.0,
    drain_timeout: Annotated[
        float | None, typer.Option(min=0, help="on Ctrl-C or SIGTERM, seconds requests in flight may take to "
                                   "finish [default: 30]")
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="a log line per request")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Start a local Ray cluster with Serve and block; Ctrl-C or SIGTERM drains, then shuts both down."""
    reg = open_registry(registry)
    check_port(host, port)  # before anything slow: a busy port is one line, not a cluster started and torn down
    from promptmux.models.loading import load_config
    from promptmux.serving.hosting.local_cluster import default_replica_gpus, run_local
    from promptmux.serving.runtime.settings import ServeSettings

    model_id = base_model_of(reg, base_model)
    load_config(model_id, trust_remote_code)  # before a cluster starts, whose replicas would fail with a long traceback
    engine = {"base_model": model_id, "device": device, "dtype": dtype, "pinned_kv": pinned_kv,
              "max_batch_size": max_batch_size, "trust_remote_code": trust_remote_code, "kv_cache_mb": kv_cache_mb,
              **({"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}),
              **({"max_model_len": max_model_len} if max_model_len is not None else {})}
    settings = ServeSettings.model_validate({
        "registry": reg.uri, "engine": engine, "refresh_interval_s": refresh_interval, "replicas": replicas,
        **({"drain_timeout_s": drain_timeout} if drain_timeout is not None else {}),
    })
    gpus = replica_gpus if replica_gpus is not None else default_replica_gpus(device)
    run_local(settings, host=host, port=port, replicas=replicas, replica_cpus=replica_cpus, replica_gpus=gpus,
              access_log=access_log, say=lambda text: console.print(text, highlight=False))


bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True,
                        rich_markup_mode=None)


QuickOption = Annotated[bool, typer.Option("--quick", help="small sizes, under a minute on 2 CPU cores")]
BenchModelOption = Annotated[
    str | None, typer.Option("--base-model", help="model to measure (default: bench-random-llama), e.g. smollm2-135m-instruct")
]
JsonPathOption = Annotated[Path | None, typer.Option("--json", help="write the results as JSON here")]


# The benchmarks measured on a model: command -> (what it compares, the sides whose latencies are printed).
def print_latencies(report: dict, sides: list[str]) -> None:
    """Throughput and latency percentiles of each side (time to first token where measured)."""
    keys = [k for k in ("latency_p50_s", "latency_p99_s", "ttft_p50_s", "ttft_p99_s") if k in report[sides[0]]]
    table = Table()
    for column in ("side", "tokens/s", *(k.removesuffix("_s").replace("_", " ") for k in keys)):
        table.add_column(column)
    for side in sides:
        table.add_row(side, f"{report[side]['tokens_per_s']:.0f}", *(f"{report[side][k]:.2f} s" for k in keys))
    console.print(table)


def print_fairness(report: dict) -> None:
    """Tenant B's latency alone, beside a flooding tenant A (first come first served, then
    fair), and the 429s each got."""
    table = Table(title=f"capacity {report['config']['capacity_requests_per_s']} requests/s")
    for column in ("B's traffic", "B p50", "B p99", "B 429s", "A served", "A 429s"):
        table.add_column(column)
    for case, label in (("alone", "alone"), ("fifo", "A floods, FIFO"), ("fair", "A floods, fair")):
        r = report[case]
        table.add_row(label, f"{r['b_p50_s']:.2f} s", f"{r['b_p99_s']:.2f} s", str(r["b_429"]), str(r["a_served"]),
                      str(r["a_429"]))
    console.print(table)


def print_decode(report: dict) -> None:
    """The decode step beside bare HF and the machine's bound, the KV held per token, and the
    ops that take most of a step."""
    decode = report["decode"]
    peak, steps, bounds = decode["peak"], decode["step_s"], decode["bound"]
    console.print(f"machine: peak flops {peak['flops_per_s'] / 1e9:.0f} GFLOP/s (matmul), copy {peak['bytes_per_s'] / 1e9:.1f} "
                  f"GB/s (read + write); context {decode['context']} positions; same tokens as HF: {decode['same_tokens_as_hf']}")
    for rows, suffix in ((report["config"]["batch"], ""), (1, "_batch1")):
        bound = bounds.get(str(rows))
        limit = (f"; bound {bound['bound_s'] * 1e3:.1f} ms ({bound['flops'] / 1e9:.2f} GFLOP: {bound['compute_s'] * 1e3:.1f} "
                 f"ms, {bound['bytes'] / 1e6:.0f} MB: {bound['memory_s'] * 1e3:.1f} ms)") if bound else ""
        console.print(f"decode step at {rows} rows: engine {steps['engine' + suffix] * 1e3:.1f} ms, bare HF "
                      f"{steps['hf' + suffix] * 1e3:.1f} ms{limit}")
    kv = decode["kv"]
    if kv["model_bytes_per_token"]:
        console.print(f"KV held per token over a run of mixed lengths: pool {report['kv_bytes_per_token']:.3f}x the model's "
                      f"{kv['model_bytes_per_token']} bytes (padding {kv['pool']['padding_share']:.1%}, empty after: "
                      f"{kv['pool']['empty_after']}); DynamicCache {kv['dynamic_cache_bytes_per_token']:.3f}x "
                      f"(padding {kv['dynamic_cache']['padding_share']:.1%})")
    table = Table(title="the ops that take most of one decode step (ms per step)")
    for column in ("engine op", "ms", "share", "bare HF op", "ms ", "share "):
        table.add_column(column)
    for mine, theirs in zip(decode["profile"]["engine"], decode["profile"]["hf"]):
        table.add_row(mine["op"], f"{mine['ms_per_step']:.2f}", f"{mine['share']:.0%}",
                      theirs["op"], f"{theirs['ms_per_step']:.2f}", f"{theirs['share']:.0%}")
    console.print(table)


MODEL_BENCHMARKS: dict[str, tuple[str, Callable[[dict], None] | None]] = {
    "engine": ("The decode step vs bare HF and the machine's bound, KV held per token, mixed vs single-task batches, "
               "engine vs PEFT, pinned KV vs recomputed virtual tokens.", print_decode),
    "scheduler": ("Continuous vs static batching: throughput ratio, latency and time to first token.",
                  functools.partial(print_latencies, sides=["continuous", "static"])),
    "http": ("The same mixed-task workload through HTTP (Ray Serve) vs the service in-process.",
             functools.partial(print_latencies, sides=["http", "engine"])),
    "streaming": ("A long output streamed vs returned at once; incremental vs full detokenization.", None),
    "fairness": ("One tenant floods at 10x capacity, another sends 10%: its p99 alone, first come first served, fair.",
                 print_fairness),
}


def _model_benchmark(name: str, summary: str, details: Callable[[dict], None] | None) -> None:
    """Register `promptmux bench NAME`, which runs `promptmux.serving.bench.NAME.run_NAME_benchmark`."""

    def command(
        quick: QuickOption = False, json_path: JsonPathOption = None, device: DeviceOption = "auto",
        dtype: DtypeOption = "auto", base_model: BenchModelOption = None,
    ) -> None:
        run = getattr(importlib.import_module(f"promptmux.serving.bench.{name}"), f"run_{name}_benchmark")
        report = run(quick=quick, device=device, dtype=dtype, base_model=base_model)
        publish(report, name, json_path)
        if details:
            details(report)

    command.__doc__ = summary
    bench_app.command(name)(command)


for _name, (_summary, _details) in MODEL_BENCHMARKS.items():
    _model_benchmark(_name, _summary, _details)


@bench_app.command("registry")
def bench_registry(
    quick: QuickOption = False, json_path: JsonPathOption = None, base_model: BenchModelOption = None,
    tasks: Annotated[str | None, typer.Option(help="registry sizes, comma-separated [default: 1000,10000; --quick: 200]")] = None,
    storage: Annotated[str, typer.Option(help="local, s3 or both (local,s3); s3 is an S3 API server started on "
                                         "127.0.0.1 (moto, a dev dependency)")] = "local",
) -> None:
    """Many tasks: registrations, list, refresh (full, unchanged, 10 changes), route p99, prompt residency."""
    from promptmux.serving.bench.registry import run_registry_benchmark

    parts = [part.strip() for part in (tasks or "").split(",") if part.strip()]
    if not all(part.isdigit() and int(part) >= 10 for part in parts):
        raise PromptmuxError(f"--tasks {tasks!r}: expected registry sizes of at least 10, e.g. 1000,10000")
    sizes = [int(part) for part in parts] or None
    storages = [part.strip() for part in storage.split(",") if part.strip()]
    if not storages or set(storages) - {"local", "s3"}:
        raise PromptmuxError(f"--storage {storage!r}: expected local, s3 or local,s3")
    report = run_registry_benchmark(quick=quick, sizes=sizes, storages=storages, base_model=base_model)
    publish(report, "registry", json_path)
    print_registry_figures(report)


@bench_app.command("console")
def bench_console(quick: QuickOption = False, json_path: JsonPathOption = None, base_model: BenchModelOption = None) -> None:
    """The console's experiment page at 10,000 outcomes beside 100: first open, poll, chart JSON size."""
    from promptmux.serving.bench.console import run_console_benchmark

    report = run_console_benchmark(quick=quick, base_model=base_model)
    publish(report, "console", json_path)
    table = Table(title="an experiment's page in the console")
    for column in ("outcomes", "first open", "poll", "chart JSON", "points drawn"):
        table.add_column(column)
    for figures in report["experiments"].values():
        table.add_row(str(figures["outcomes"]), f"{figures['page_first_s']:.3f} s", f"{figures['poll_s']:.3f} s",
                      f"{figures['chart_json_kb']} kB", str(figures["points"]))
    console.print(table)
    console.print(f"poll at {report['config']['outcomes']} outcomes / at 100: {report['large_over_small_poll']}×")


def publish(report: dict, name: str, json_path: Path | None) -> None:
    """Write the report as JSON (if asked) and print its ratios against their targets."""
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    config, machine = report["config"], report["machine"]
    table = Table(title=f"bench {name} ({config['mode']}, {config['base_model']}, {config['device']})")
    for column in ("ratio", "measured", "target", "met"):
        table.add_column(column)
    for ratio, target in report["targets"].items():  # a number is a floor; {"at_most": x} a ceiling
        ceiling = target["at_most"] if isinstance(target, dict) else None
        met = report[ratio] <= ceiling if ceiling is not None else report[ratio] >= target
        table.add_row(ratio, f"{report[ratio]:.3f}", f"≤ {ceiling}" if ceiling is not None else f"≥ {target}",
                      "yes" if met else "NO")
    console.print(table)
    quiet = "[red]BUSY: other processes were loading the CPU; timings are not comparable[/red]" if machine["busy_before"] \
        else "quiet"
    console.print(f"load average before {machine['load_average_before']}, after {machine['load_average_after']} "
                  f"({machine['cpu_cores']} cores, {machine['cpu_threads']} torch threads): {quiet}")


def print_registry_figures(report: dict) -> None:
    """Per storage and size: registrations, list, refresh (seconds and storage requests), route p99, alias move."""
    table = Table(title="registry at scale")
    for column in ("storage", "tasks", "reg/s (8 writers)", "list", "refresh full", "unchanged", "10 changes",
                   "full/unchanged", "route p99", "p99 vs 10 tasks", "alias move"):
        table.add_column(column)
    for storage, sizes in report["storage"].items():
        for size, f in sizes.items():
            refresh = [f"{f[k]['s'] * 1000:.1f} ms, {f[k]['requests']} req"
                       for k in ("refresh_full", "refresh_unchanged", "refresh_10_changes")]
            table.add_row(storage, size, f"{f['registrations_per_s']:.0f}", f"{f['list_s']:.2f} s", *refresh,
                          f"{f['full_over_unchanged']:.0f}×", f"{f['route_p99_s'] * 1e6:.1f} µs",
                          f"{f['route_p99_ratio']:.2f}", f"{f['alias_move_s']:.2f} s")
    console.print(table)
    prompts = report["prompts"]
    console.print(f"{prompts['resident']} prompts resident: {prompts['cache_bytes_per_prompt']} bytes each as the cache "
                  f"counts them, {prompts['rss_bytes_per_prompt']} as the process grew; decode step beside cold loads "
                  f"{prompts['steps_with_cold_loads_over_quiet']}× quiet ({prompts['cold_loads_during_batch']} loaded)")
