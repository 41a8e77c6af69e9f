"""What many test modules share (plain helpers; the pytest fixtures are in `conftest.py`):
registries filled with random prompts, the shared seed data's folder, and a promptmux
server in-process or as the installed command."""

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
import uvicorn

from promptmux.core.fields import GenerationParams
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.bench.common import random_registry
from promptmux.serving.hosting.ports import free_port
from promptmux.serving.http.app import build_app
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

BASE = "tiny-random-llama"
REAL_MODEL = "smollm2-135m-instruct"
SPECS = [
    TaskSpec(name="act-as", template="Act as: {input}\nPrompt:", base_model=BASE,
             generation=GenerationParams(max_new_tokens=6)),
    TaskSpec(name="summarize", template="Summary of {input}:", base_model=BASE,
             generation=GenerationParams(max_new_tokens=5, repetition_penalty=1.3)),
    TaskSpec(name="grooming", kind="classification", template="Comment: {input}\nSatisfaction:\n",
             labels={"0": "0", "1": "1"}, base_model=BASE),
]


SERVED_LENGTHS = ([4, 9, 6], [7], [5, 8])  # the versions of each of SPECS, by their number of virtual tokens
PROMPT_LENGTHS = {"alpha": 3, "beta": 7, "gamma": 12}  # plain generation tasks, as the engine tests use them
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def build_registry(path: Path | str, base_model: str = BASE, tasks: list[tuple[TaskSpec, list[int]]] | None = None,
                   seed: int = 3) -> Registry:
    """A registry of `tasks` (each spec with its versions' prompt lengths; by default SPECS),
    every prompt random from `seed`."""
    return random_registry(str(path), base_model, tasks or list(zip(SPECS, SERVED_LENGTHS)), seed)


def fill_registry(path: Path | str, base_model: str, extra_versions: int = 0) -> Registry:
    """The engine tests' registry: PROMPT_LENGTHS's tasks on `base_model`, 1 + `extra_versions` versions each."""
    return build_registry(path, base_model, [(TaskSpec(name=name, base_model=base_model), [n] * (1 + extra_versions))
                                             for name, n in PROMPT_LENGTHS.items()], seed=11)


def random_prompt(rows: int = 4, cols: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def wait_until(condition, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serve_locally(settings: ServeSettings) -> Iterator[tuple[str, PromptmuxService]]:
    """The real app of one replica over real HTTP (uvicorn on a loopback port), without Ray:
    for tests that reach into the replica to inject a fault."""
    service = PromptmuxService(settings)
    server = uvicorn.Server(uvicorn.Config(build_app(service), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30)
        yield f"http://127.0.0.1:{server.config.port}", service
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.shutdown()


def start_serve(registry: str, port: int, *options: str, cwd: Path | None = None,
                base_model: str | None = BASE) -> subprocess.Popen:
    """`promptmux serve` (the installed command) in a subprocess, returned once it answers its health check."""
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "promptmux"), "serve", "--registry", registry, "--port", str(port),
         *(["--base-model", base_model] if base_model else []), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        cwd=cwd,
    )
    wait_until(lambda: process.poll() is not None or healthy(f"http://127.0.0.1:{port}"), timeout=240, interval=0.5)
    assert process.poll() is None, process.stdout.read()
    return process


MOVE_DEADLINE_S = 5.0  # an alias moved in the registry is served by every replica within this


def served_by(url: str, headers: dict[str, str] | None = None) -> dict[str, set[int]]:
    """A burst of act-as generations: the versions each replica (by its header) answered with."""
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
            body = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 1}}
            return await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(16)))

    versions: dict[str, set[int]] = {}
    for response in asyncio.run(burst()):
        assert response.status_code == 200, response.text
        versions.setdefault(response.headers["x-promptmux-replica"], set()).add(response.json()["outputs"][0]["version"])
    return versions


def seconds_until_every_replica_serves(url: str, registry: Registry, version: int,
                                       headers: dict[str, str] | None = None) -> float:
    """Move `production` of act-as to `version`; seconds until a burst reaches both replicas and
    every answer comes from that version (at most MOVE_DEADLINE_S, or TimeoutError)."""
    wait_until(lambda: len(served_by(url, headers)) == 2, timeout=60, interval=0.5)
    registry.aliases.set("act-as", "production", version)
    moved = time.monotonic()
    wait_until(lambda: (lambda seen: len(seen) == 2 and all(v == {version} for v in seen.values()))(
        served_by(url, headers)), timeout=MOVE_DEADLINE_S, interval=0.1)
    return time.monotonic() - moved
