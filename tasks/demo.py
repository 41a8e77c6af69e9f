"""`promptmux demo` (`make demo`): the whole product on a real model, in minutes.

On SmolLM2-135M-Instruct (real weights, built offline from its GGUF package), the demo
reproduces the watsonx seed's comparison (dog-grooming reviews: tuned prompt vs the
untuned model, accuracy and macro F1 on the 116 test reviews), trains a generation task
and shows real text before and after tuning, trains a second version of the classifier
and splits its traffic 50/50, starts the serving runtime (`promptmux serve`, a local Ray
cluster), sends a burst of mixed-task requests with routing keys, prints what served each
one and the per-variant counters from `/metrics`, and shuts everything down.

Training runs on subsets with short schedules (one epoch of 160 reviews for dog grooming)
so that all of it fits in a few minutes on two CPU cores; the demo prints what it used.
The full runs are `tasks/examples/`, with their figures in `docs/quality.md`.
"""

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from promptmux.registry.cli import console
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import DataFields, Example, examples, fingerprint_files, load_records, split
from promptmux.tasks.report import print_report
from promptmux.tasks.spec_file import example

DATA = Path(__file__).resolve().parent / "examples" / "data"
DEMO_MODEL = "smollm2-135m-instruct"
SEED_DOG_GROOMING = Path("dog_grooming")
# The watsonx seed's own figures (Granite-13B, 116 test reviews), printed for comparison.
SEED_TABLE = {"tuned": (0.983, 0.983), "base": (0.931, 0.930)}
# The demo's time budget: one epoch, two validation passes, no early stopping.
SHORT_RUN = {"epochs": 1, "evals_per_epoch": 2, "early_stopping_patience": 0}


@dataclass(frozen=True)
class DemoTask:
    spec: TaskSpec
    config: TrainConfig
    train: list[Example]
    held_out: list[Example]
    data_files: list[Path]
    source: str
    seed_test: bool = False


def _dog_grooming(base_model: str, seed_data: Path, train_size: int) -> DemoTask:
    """The example spec (`tasks/examples/dog-grooming.yaml`) on the seed's reviews, else on
    the project's own."""
    spec, fields, config = example("dog-grooming", base_model=base_model)
    config = config.model_copy(update=SHORT_RUN)
    folder = seed_data / SEED_DOG_GROOMING
    train_file, test_file = folder / "dog_grooming_reviews_train_data.json", folder / "dog_grooming_reviews_test_data.json"
    if test_file.exists():
        reviews = examples(load_records(train_file), fields, train_file)
        # The file is ordered (mostly satisfied reviews first): a random subset keeps its balance.
        train = random.Random(0).sample(reviews, min(train_size, len(reviews)))
        test = examples(load_records(test_file), fields, test_file)
        return DemoTask(spec, config, train, test, [train_file, test_file],
                        f"{folder} (a random {len(train)} of its {len(reviews)} training reviews)", seed_test=True)
    path = DATA / "reviews.jsonl"
    train, test = split(examples(load_records(path), DataFields(input_field="review", target_field="satisfied"), path),
                        0.25, seed=0)
    console.print(f"[yellow]{test_file} not found: using the project's own example reviews instead[/yellow]")
    return DemoTask(spec, config, train, test, [path], "tasks/examples/data/reviews.jsonl")


def _act_as(base_model: str) -> DemoTask:
    """The example spec (`tasks/examples/act-as.yaml`) on the project's own roles."""
    spec, fields, config = example("act-as", base_model=base_model)
    path = DATA / "roles.jsonl"
    train, test = split(examples(load_records(path), fields, path), 0.2, seed=0)
    return DemoTask(spec, config.model_copy(update={**SHORT_RUN, "epochs": 6}), train, test, [path],
                    "tasks/examples/data/roles.jsonl")


INPUTS = {
    "dog-grooming": ["Lovely groomer, my dog looks great", "They lost my dog's leash and were rude about it",
                     "Fast, friendly and fairly priced"],
    "act-as": ["a travel guide", "a chess coach", "a logistician"],
}


def _train(reg: Registry, task: DemoTask, out: Path, alias: str | None = None, seed: int | None = None) -> int:
    from promptmux.tasks.train import train_task  # torch and peft load here, not for `promptmux --help`

    config = task.config if seed is None else task.config.model_copy(update={"seed": seed})
    console.print(f"[bold]{task.spec.name}[/bold]: {len(task.train)} training examples from {task.source}, "
                  f"{len(task.held_out)} held out; {config.num_virtual_tokens} virtual tokens, {config.epochs} epoch(s), "
                  f"lr {config.lr}, seed {config.seed}")
    result = train_task(task.spec, task.train, task.held_out, config, reg, out / f"{task.spec.name}-{config.seed}",
                        fingerprint_files(task.data_files), alias=alias, console=console)
    print_report(task.spec, result.metrics, console)
    console.print(f"registered {task.spec.name} version {result.manifest.version}")
    return result.manifest.version


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(reg: Registry, base_model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "from promptmux.registry.cli import main; main()", "serve", "--registry", reg.uri,
               "--base-model", base_model, "--port", str(port), "--refresh-interval", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not start:\n{process.communicate()[0][-3000:]}")


async def _burst(port: int) -> list[dict]:
    requests = []
    for round_ in range(4):
        for task, texts in INPUTS.items():
            for i, text in enumerate(texts):
                path = "/v1/generate" if task == "act-as" else "/v1/classify"
                requests.append((path, {"task": task, "input": text, "routing_key": f"customer-{round_}-{i}"}))

    async def send(client: httpx.AsyncClient, path: str, body: dict) -> dict:
        start = time.perf_counter()
        response = await client.post(path, json=body)
        response.raise_for_status()
        output = response.json()["outputs"][0]
        return {**body, **output, "latency_ms": (time.perf_counter() - start) * 1000}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        return await asyncio.gather(*(send(client, path, body) for path, body in requests))


def demo(
    registry: Annotated[str | None, typer.Option("--registry", help="registry to fill (default: a new temporary one)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port for the demo server (default: a free one)")] = None,
    base_model: Annotated[str, typer.Option("--base-model", help="base model to tune and serve")] = DEMO_MODEL,
    seed_data: Annotated[Path, typer.Option("--seed-data", help="folder holding the seed tutorials' data")] = Path(
        "../shared/data"),
    train_size: Annotated[int, typer.Option("--train-size", min=8, help="dog-grooming training reviews used")] = 160,
) -> None:
    """Tune a real model for two tasks, compare with the untuned model, roll out a second
    version 50/50, serve everything from one base model, send mixed traffic."""
    started = time.monotonic()
    reg = Registry(registry or tempfile.mkdtemp(prefix="promptmux-demo-"))
    runs = Path(tempfile.mkdtemp(prefix="promptmux-demo-runs-"))
    console.rule(f"promptmux demo: base model {base_model}, registry {reg.uri}")
    from promptmux.registry.base_models import resolve_model_path

    with console.status(f"preparing {base_model} (built once from its package, then cached)"):
        resolve_model_path(base_model)
    grooming, act_as = _dog_grooming(base_model, seed_data, train_size), _act_as(base_model)
    first = _train(reg, grooming, runs, "production")
    if grooming.seed_test:
        console.print(_seed_table(reg.get_version("dog-grooming", first).metrics))
    _train(reg, act_as, runs, "production")
    second = _train(reg, grooming, runs, seed=7)
    reg.set_rollout("dog-grooming", RolloutSpec(variants=[RolloutVariant(version=first, weight=50),
                                                          RolloutVariant(version=second, weight=50)]))
    console.print(f"dog-grooming: rollout v{first} 50% / v{second} 50%; learning curves under {runs}")

    port = port or _free_port()
    console.rule(f"starting the serving runtime on http://127.0.0.1:{port}")
    with console.status("starting Ray, one Serve replica and its copy of the base model"):
        server = _start_server(reg, base_model, port)
    try:
        with console.status("sending the requests"):
            results = asyncio.run(_burst(port))
        table = Table(title=f"{len(results)} mixed-task requests")
        for column in ("task", "routing key", "version", "variant", "output", "latency"):
            table.add_column(column, overflow="fold")
        for r in results:
            output = f"{r['label']} (p={r['probabilities'][r['label']]:.2f})" if "label" in r else repr(r["text"])[:60]
            table.add_row(r["task"], r["routing_key"], str(r["version"]), r["variant"], output, f"{r['latency_ms']:.0f} ms")
        console.print(table)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        console.print("per-variant counters from /metrics:")
        for line in metrics.splitlines():
            if line.startswith("promptmux_requests_total"):
                console.print(f"  {line}", highlight=False)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=120)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s; server stopped (exit code {server.returncode})")


def _seed_table(metrics: dict) -> Table:
    table = Table(title="dog grooming, 116 test reviews: promptmux on SmolLM2-135M vs the watsonx seed on Granite-13B")
    for column in ("model", "accuracy", "macro F1"):
        table.add_column(column)
    table.add_row("SmolLM2-135M + tuned prompt", f"{metrics['accuracy']:.3f}", f"{metrics['macro_f1']:.3f}")
    table.add_row("SmolLM2-135M untuned", f"{metrics['base_accuracy']:.3f}", f"{metrics['base_macro_f1']:.3f}")
    table.add_row("Granite-13B + tuned prompt (seed)", *(f"{v:.3f}" for v in SEED_TABLE["tuned"]))
    table.add_row("Granite-13B untuned (seed)", *(f"{v:.3f}" for v in SEED_TABLE["base"]))
    return table
