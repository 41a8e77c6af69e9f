"""`promptmux demo` (`make demo`): the whole product on the embedded model, in minutes.

Trains three small tasks on the project's own example data (`tasks/examples/data`),
registers them, trains a second version of one and splits its traffic 50/50, starts the
serving runtime (`promptmux serve`, a local Ray cluster), sends a burst of mixed-task
requests with routing keys, prints what served each one and the per-variant counters
from `/metrics`, and shuts everything down.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from registry import GenerationParams, Registry, RolloutSpec, RolloutVariant, TaskSpec
from registry.base_models import DEFAULT_BASE_MODEL
from registry.cli import console
from tasks.data import examples, fingerprint_files, load_records, split
from tasks.train import TrainConfig, train_task

DATA = Path(__file__).resolve().parent / "examples" / "data"
DEMO_TASKS = [
    (TaskSpec(name="review-satisfaction", kind="classification", template="Review: {input}\nSatisfied:",
              labels={"0": "no", "1": "yes"}, base_model=DEFAULT_BASE_MODEL,
              description="Was the pet owner satisfied with the groomer?"),
     "reviews.jsonl", "review", "satisfied"),
    (TaskSpec(name="ticket-priority", kind="classification", template="Ticket: {input}\nPriority:",
              labels={"low": "low", "high": "high"}, base_model=DEFAULT_BASE_MODEL,
              description="How urgent is this support ticket?"),
     "tickets.jsonl", "ticket", "priority"),
    (TaskSpec(name="act-as", template="I want you to act as {input}.\nPrompt:", base_model=DEFAULT_BASE_MODEL,
              generation=GenerationParams(max_new_tokens=24, repetition_penalty=1.5),
              description="I want you to act as"),
     "roles.jsonl", "act", "prompt"),
]
INPUTS = {
    "review-satisfaction": ["Lovely groomer, my dog looks great", "They lost my dog's leash", "Fast and friendly"],
    "ticket-priority": ["The site is down for all users", "Please fix a typo in the footer"],
    "act-as": ["a travel guide", "a chess coach", "a logistician"],
}


def _train(reg: Registry, spec: TaskSpec, data: str, input_field: str, target_field: str, seed: int,
           out: Path, alias: str | None = None) -> int:
    path = DATA / data
    train_set, held_out = split(examples(load_records(path), input_field, target_field, path), 0.25, seed)
    config = TrainConfig(base_model=spec.base_model, num_virtual_tokens=8, epochs=3, batch_size=8, seed=seed,
                         init_text=spec.description, max_output_tokens=24)
    result = train_task(spec, train_set, held_out, config, reg, out / f"{spec.name}-{seed}",
                        fingerprint_files([path]), alias=alias, console=console)
    return result.manifest.version


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(reg: Registry, base_model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "from registry.cli import main; main()", "serve", "--registry", reg.uri,
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
) -> None:
    """Train three tasks, roll out a second version 50/50, serve them, send mixed traffic."""
    started = time.monotonic()
    reg = Registry(registry or tempfile.mkdtemp(prefix="promptmux-demo-"))
    runs = Path(tempfile.mkdtemp(prefix="promptmux-demo-runs-"))
    console.rule(f"promptmux demo: registry {reg.uri}, base model {DEFAULT_BASE_MODEL} (random weights: outputs are noise)")
    for spec, data, input_field, target_field in DEMO_TASKS:
        version = _train(reg, spec, data, input_field, target_field, seed=1, out=runs, alias="production")
        console.print(f"registered {spec.name} version {version}")
    spec, data, input_field, target_field = DEMO_TASKS[0]
    second = _train(reg, spec, data, input_field, target_field, seed=2, out=runs)
    first = reg.aliases(spec.name)["production"]
    reg.set_rollout(spec.name, RolloutSpec(variants=[RolloutVariant(version=first, weight=50),
                                                     RolloutVariant(version=second, weight=50)]))
    console.print(f"{spec.name}: rollout v{first} 50% / v{second} 50%; learning curves under {runs}")

    port = port or _free_port()
    console.rule(f"starting the serving runtime on http://127.0.0.1:{port}")
    server = _start_server(reg, DEFAULT_BASE_MODEL, port)
    try:
        results = asyncio.run(_burst(port))
        table = Table(title=f"{len(results)} mixed-task requests")
        for column in ("task", "routing key", "version", "variant", "output", "latency"):
            table.add_column(column)
        for r in results:
            output = r.get("label") or repr(r.get("text", ""))[:40]
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
