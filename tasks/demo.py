"""`promptmux demo` (`make demo`): the whole product on a real model, in minutes.

On SmolLM2-135M-Instruct (real weights, built offline from its GGUF package), the demo
reproduces the watsonx seed's comparison (dog-grooming reviews: tuned prompt vs the
untuned model, accuracy and macro F1 on the 116 test reviews), trains a generation task
and shows real text before and after tuning, trains a weaker second version of the
classifier (on 16 reviews) and starts an automatic rollout between the two with the weaker
as the control, starts the serving runtime (`promptmux serve`, a local Ray cluster), sends
a burst of mixed-task requests with routing keys, prints what served each one and the
per-variant counters from `/metrics`, then closes the loop: the test reviews go in as
traffic and their gold labels as feedback, and the demo prints the controller's decisions
as they happen and the task's history, and shuts everything down.

Training runs on subsets with short schedules (one epoch of 160 reviews for dog grooming)
so that all of it fits in a few minutes on two CPU cores; the demo prints what it used.
The full runs are `tasks/examples/`, with their figures in `docs/quality.md`.
"""

import asyncio
import os
import random
import signal
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

from promptmux.registry import Registry, TaskSpec
from promptmux.registry.policy import RolloutPolicy
from promptmux.serving.hosting.ports import free_port
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import DataFields, Example, examples, fingerprint_files, load_records, split
from promptmux.tasks.progress import console, status
from promptmux.tasks.report import base_rows, print_report
from promptmux.tasks.spec_file import example

DATA = Path(__file__).resolve().parent / "examples" / "data"
DEMO_MODEL = "smollm2-135m-instruct"
SEED_DOG_GROOMING = Path("dog_grooming")
# The watsonx seed's own figures (Granite-13B, 116 test reviews), printed for comparison.
SEED_TABLE = {"tuned": (0.983, 0.983), "base": (0.931, 0.930)}
# The demo's time budget: one epoch, two validation passes, no early stopping.
WEAK_TRAIN_SIZE = 16  # the second version: trained on far fewer reviews, the weaker one
AB_SHARE = 50.0  # the candidate's share in the demo's automatic rollout
AB_BATCH, CONTROLLER_WAIT_S = 16, 2.0
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


def _start_server(reg: Registry, base_model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "promptmux.cli", "serve", "--registry", reg.uri,
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
    feedback_passes: Annotated[int, typer.Option("--feedback-passes", min=1, help="passes over the held-out reviews "
                                                 "while closing the loop, unless the rollout ends first")] = 4,
) -> None:
    """Tune a real model for two tasks, compare with the untuned model, roll out a second
    version 50/50, serve everything from one base model, send mixed traffic."""
    started = time.monotonic()
    reg = Registry(registry or tempfile.mkdtemp(prefix="promptmux-demo-"))
    runs = Path(tempfile.mkdtemp(prefix="promptmux-demo-runs-"))
    console.rule(f"promptmux demo: base model {base_model}, registry {reg.uri}")
    from promptmux.models.embedded import resolve_model_path

    with status(console, f"preparing {base_model} (built once from its package, then cached)"):
        resolve_model_path(base_model)
    grooming, act_as = _dog_grooming(base_model, seed_data, train_size), _act_as(base_model)
    first = _train(reg, grooming, runs, "production")
    if grooming.seed_test:
        console.print(_seed_table(reg.versions.get("dog-grooming", first).metrics))
    _train(reg, act_as, runs, "production")
    weak = DemoTask(grooming.spec, grooming.config, grooming.train[:WEAK_TRAIN_SIZE], grooming.held_out,
                    grooming.data_files, f"{grooming.source}, only the first {WEAK_TRAIN_SIZE}")
    second = _train(reg, weak, runs, seed=7)
    control, candidate = _start_auto_rollout(reg, first, second)
    console.print(f"dog-grooming: automatic rollout, control v{control} (the weaker) {100 - AB_SHARE:g}% / "
                  f"candidate v{candidate} {AB_SHARE:g}%; learning curves under {runs}")

    port = port or free_port()
    console.rule(f"starting the serving runtime on http://127.0.0.1:{port}")
    with status(console, "starting Ray, one Serve replica and its copy of the base model"):
        server = _start_server(reg, base_model, port)
    try:
        with status(console, "sending the requests"):
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
        console.rule("closing the loop: the held-out reviews as traffic, their gold labels as feedback")
        sent = asyncio.run(_ab_traffic(port, reg, grooming.held_out, feedback_passes))
        console.print(_history_table(reg, "dog-grooming"))
        production = reg.aliases.of("dog-grooming")["production"]
        state = "still running" if reg.rollouts.policy("dog-grooming") else "ended"
        console.print(f"after {sent} reviews with feedback the rollout has {state}; production is v{production}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=120)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s; server stopped (exit code {server.returncode})")


def _start_auto_rollout(reg: Registry, first: int, second: int) -> tuple[int, int]:
    """The version with the lower held-out accuracy becomes production and the control."""
    accuracy = {v: reg.versions.get("dog-grooming", v).metrics.get("accuracy", 0.0) for v in (first, second)}
    control, candidate = sorted((second, first), key=lambda v: accuracy[v])
    reg.aliases.set("dog-grooming", "production", control, reason="demo: the weaker version is the control")
    reg.rollouts.start("dog-grooming", RolloutPolicy(control=control, candidate=candidate, steps=[AB_SHARE],
                                                       min_samples_per_step=20), reason="demo")
    return control, candidate


async def _ab_traffic(port: int, reg: Registry, reviews: list[Example], passes: int) -> int:
    """Classify the reviews (up to `passes` times) and send each gold label as feedback,
    printing the controller's decisions as they happen; the number of reviews sent."""
    seen, sent = len(reg.history("dog-grooming")), 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

        async def judged(review: Example, key: str) -> None:
            response = await client.post("/v1/classify", json={"task": "dog-grooming", "input": review.input,
                                                                "routing_key": key})
            response.raise_for_status()
            output = response.json()["outputs"][0]
            (await client.post("/v1/feedback", json={"id": output["id"], "label": review.target})).raise_for_status()

        for round_ in range(passes):
            for start in range(0, len(reviews), AB_BATCH):
                batch = reviews[start: start + AB_BATCH]
                await asyncio.gather(*(judged(r, f"reviewer-{round_}-{start + i}") for i, r in enumerate(batch)))
                sent += len(batch)
                seen = _print_decisions(reg, seen, sent)
                if reg.rollouts.policy("dog-grooming") is None:
                    return sent
            await asyncio.sleep(2 * CONTROLLER_WAIT_S)  # the controller's look at the end of this pass
            seen = _print_decisions(reg, seen, sent)
            if reg.rollouts.policy("dog-grooming") is None:
                break
    return sent


def _print_decisions(reg: Registry, seen: int, sent: int) -> int:
    """Print the controller's changes after the first `seen` of the history; the new count."""
    changes = reg.history("dog-grooming")
    for change in changes[seen:]:
        if change.actor == "controller" and change.stats:
            control, candidate = change.stats["control"], change.stats["candidate"]
            console.print(f"after {sent} reviews: [bold]{change.action}[/bold] — {change.reason} (control "
                          f"v{control['version']} {control['mean']:.3f} on {control['outcomes']}, candidate "
                          f"v{candidate['version']} {candidate['mean']:.3f} on {candidate['outcomes']}, "
                          f"p {change.stats['p_value']:.4f})")
    return len(changes)


def _history_table(reg: Registry, task: str) -> Table:
    table = Table(title=f"history of {task} (promptmux registry history {task})")
    for column in ("actor", "change"):
        table.add_column(column, overflow="fold")
    for change in reg.history(task):
        table.add_row(change.actor, change.summary())
    return table


def _seed_table(metrics: dict) -> Table:
    table = Table(title="dog grooming, 116 test reviews: promptmux on SmolLM2-135M vs the watsonx seed on Granite-13B")
    for column in ("model", "accuracy", "macro F1"):
        table.add_column(column)
    table.add_row("SmolLM2-135M + tuned prompt", f"{metrics['accuracy']:.3f}", f"{metrics['macro_f1']:.3f}")
    for name, key in base_rows(metrics):
        table.add_row(f"SmolLM2-135M {name.removeprefix('untuned base model ')} untuned", f"{metrics[key]['accuracy']:.3f}",
                      f"{metrics[key]['macro_f1']:.3f}")
    table.add_row("Granite-13B + tuned prompt (seed)", *(f"{v:.3f}" for v in SEED_TABLE["tuned"]))
    table.add_row("Granite-13B untuned (seed)", *(f"{v:.3f}" for v in SEED_TABLE["base"]))
    return table
