"""`promptmux bench console`: what a large experiment costs the console.

One task with an automatic rollout of N outcomes (10,000; `--quick`: 2,000) beside one of
100, in one registry on local disk, both read through the console's app as a browser reads
them (its ASGI app, no socket):

* `page_s`: the experiment page, first open (every outcome file read) and then polled (only
  new files read), fastest of 3 after the first;
* `chart_json_kb`: the JSON its chart polls, thinned to at most 400 points whatever N;
* `large_over_small_poll`: a poll at N outcomes / at 100 (the series is linear in N, the
  JSON is not).
"""

import random
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from promptmux.registry import Registry
from promptmux.registry.policy import Outcome, RolloutPolicy, SequentialTest
from promptmux.registry.records import task_rel
from promptmux.serving.bench.common import bench_registry
from promptmux.serving.bench.machine import load_average, machine_report
from promptmux.serving.console.app import console_app

SIZES = {"quick": 2_000, "full": 10_000}
SMALL = 100


def write_outcomes(registry: Registry, task: str, count: int) -> None:
    """`count` outcomes of the task's running experiment, written as the feedback endpoint stores them."""
    rollout = registry.rollouts.get(task)
    folder = Path(registry.uri) / task_rel(task) / "outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        variant = rng.choice(rollout.variants)
        outcome = Outcome(id=f"bench-{i}", task=task, version=variant.version, variant=variant.name,
                          experiment=rollout.experiment, score=float(rng.random() < 0.6))
        (folder / outcome.file_name()).write_text(outcome.model_dump_json())


def run_console_benchmark(quick: bool = False, base_model: str | None = None) -> dict:
    load_before = load_average()
    model = base_model or "tiny-random-llama"
    large = SIZES["quick" if quick else "full"]
    registry = bench_registry(model, {"large": [4, 4], "small": [4, 4]})
    for task, count in (("large", large), ("small", SMALL)):
        registry.aliases.set(task, "production", 1)
        registry.rollouts.start(task, RolloutPolicy(control=1, candidate=2, steps=[50],
                                                    test=SequentialTest(max_samples=10 * large)))
        write_outcomes(registry, task, count)
    browser = TestClient(console_app(registry), base_url="http://bench/ui", root_path="/ui")
    figures: dict[str, dict] = {}
    for task in ("large", "small"):
        started = time.perf_counter()
        first = browser.get(f"/tasks/{task}/experiment")
        first_s = time.perf_counter() - started
        polls = []
        for _ in range(3):
            started = time.perf_counter()
            data = browser.get(f"/api/tasks/{task}/experiment")
            polls.append(time.perf_counter() - started)
        assert first.status_code == 200 and data.status_code == 200, (first.text, data.text)
        figures[task] = {"outcomes": data.json()["outcomes"], "page_first_s": round(first_s, 4),
                         "poll_s": round(min(polls), 4), "chart_json_kb": round(len(data.content) / 1e3, 1),
                         "points": len(data.json()["series"]["outcomes"])}
    return {
        "config": {"mode": "quick" if quick else "full", "base_model": model, "device": "cpu", "outcomes": large},
        "machine": machine_report(torch.device("cpu"), load_before),
        "experiments": figures,
        "page_s": figures["large"]["page_first_s"],
        "chart_json_kb": figures["large"]["chart_json_kb"],
        "large_over_small_poll": round(figures["large"]["poll_s"] / figures["small"]["poll_s"], 2),
        "targets": {"page_s": {"at_most": 1.0}, "chart_json_kb": {"at_most": 200}},
    }
