"""A failure inside the engine hurts only the rows that caused it, and a dead engine loop
shows on the health check instead of hanging every request.

Failures are injected into real parts: a logits processor that raises in one row of a
running batch, a step that raises, a loop thread that dies. The server side runs the real
FastAPI app over real HTTP (uvicorn on a loopback port).
"""

import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from serve_fixtures import BASE, build_registry, serve_locally
from transformers import LogitsProcessor

from registry.schemas import GenerationParams
from serving.batching import GenerationRow
from serving.config import EngineConfig
from serving.engine import Engine
from serving.scheduler import Scheduler
from serving.service import PromptmuxService
from serving.settings import ServeSettings


class Explodes(LogitsProcessor):
    """A row's processor that fails, as a bad parameter or a bug in a processor would."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise FloatingPointError("injected failure in one row")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(EngineConfig(base_model=BASE, dtype="float32", max_batch_size=8),
                  build_registry(tmp_path_factory.mktemp("faults") / "registry"))


def rows(engine: Engine) -> list[GenerationRow]:
    params = [GenerationParams(max_new_tokens=12, min_new_tokens=12, repetition_penalty=r) for r in (1.0, 1.3, 1.0, 1.5)]
    texts = ["a poet", "the meeting", "a chef", "x"]
    prompt = engine.prompt(engine.registry.latest("act-as"))
    return [GenerationRow(prompt, engine.encode(text), p) for text, p in zip(texts, params)]


def test_a_row_that_fails_mid_batch_fails_alone_and_the_others_finish_unchanged(engine: Engine) -> None:
    clean = [engine.generate([row])[0] for row in rows(engine)]
    scheduler = Scheduler(engine.config, engine)
    states = [scheduler.submit(row) for row in rows(engine)]
    for _ in range(4):  # a few tokens into the batch
        scheduler.step()
    assert len(scheduler.running) == 4 and all(len(s.generated) == 4 for s in states)
    states[1].sampler.processors.append(Explodes())
    while scheduler.has_work():
        scheduler.step()
    assert states[1].error == "injected failure in one row" and states[1].generated == clean[1].token_ids[:4]
    for j in (0, 2, 3):
        assert states[j].error is None
        assert states[j].output(engine.decode).token_ids == clean[j].token_ids


@pytest.fixture
def live_server(tmp_path) -> Iterator[tuple[str, PromptmuxService]]:
    settings = ServeSettings(registry=build_registry(tmp_path / "registry").uri, request_timeout_s=30,
                             engine=EngineConfig(base_model=BASE, max_new_tokens=64))
    with serve_locally(settings) as served:
        yield served


def test_a_step_that_raises_fails_the_rows_in_flight_and_the_loop_serves_on(live_server) -> None:
    url, service = live_server
    scheduler = service.async_engine.scheduler
    real_decode, calls = scheduler._decode, []

    def decode_that_fails_once() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected step failure")
        real_decode()

    scheduler._decode = decode_that_fails_once
    body = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 8, "min_new_tokens": 8}}
    failed = httpx.post(f"{url}/v1/generate", json=body, timeout=30)
    assert failed.status_code == 500 and failed.json()["error"]["message"]
    served = httpx.post(f"{url}/v1/generate", json=body, timeout=30)
    assert served.status_code == 200 and len(served.json()["outputs"][0]["token_ids"]) == 8
    assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_dead_engine_loop_turns_health_red_and_requests_fail_fast(live_server) -> None:
    url, service = live_server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"

    def step_that_kills_the_thread() -> None:
        raise SystemExit("injected: the engine thread dies")

    service.async_engine.scheduler.step = step_that_kills_the_thread
    body = {"task": "act-as", "input": "a poet"}
    in_flight = httpx.post(f"{url}/v1/generate", json=body, timeout=10)  # wakes the loop, which dies under it
    assert in_flight.status_code == 503 and "replaced" in in_flight.json()["error"]["message"]
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 503 and "engine loop has stopped" in health.json()["error"]["message"]
    assert health.headers["retry-after"]
    started = time.monotonic()
    for path, request in (("/v1/generate", body), ("/v1/classify", {"task": "grooming", "input": "kind staff"})):
        response = httpx.post(f"{url}{path}", json=request, timeout=30)
        assert response.status_code == 503 and "replaced" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5  # refused at once, not after the request timeout
