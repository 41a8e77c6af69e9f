"""A failure inside the engine hurts only the rows that caused it, and a dead engine loop
shows on the health check instead of hanging every request.

Failures are injected into real parts: a logits processor that raises in one row of a
running batch, a step that raises, a loop thread that dies. The server side runs the real
FastAPI app over real HTTP (uvicorn on a loopback port).
"""

import asyncio
import collections
import json
import math
import random
import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from helpers import BASE, build_registry, serve_locally
from transformers import LogitsProcessor

from promptmux.core.fields import GenerationParams
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings


class Explodes(LogitsProcessor):
    """A row's processor that fails, as a bad parameter or a bug in a processor would."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise FloatingPointError("injected failure in one row")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(EngineConfig(base_model=BASE, dtype="float32", max_batch_size=8),
                  build_registry(tmp_path_factory.mktemp("faults") / "registry").versions)


def rows(engine: Engine) -> list[GenerationRow]:
    params = [GenerationParams(max_new_tokens=12, min_new_tokens=12, repetition_penalty=r) for r in (1.0, 1.3, 1.0, 1.5)]
    texts = ["a poet", "the meeting", "a chef", "x"]
    prompt = engine.prompt(engine.loader.latest("act-as"))
    return [GenerationRow(prompt, engine.inputs.encode(text), p) for text, p in zip(texts, params)]


def test_a_row_that_fails_mid_batch_fails_alone_and_the_others_finish_unchanged(engine: Engine) -> None:
    clean = [generate(engine, [row])[0] for row in rows(engine)]
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
        assert states[j].output().token_ids == clean[j].token_ids


@pytest.fixture
def live_server(tmp_path) -> Iterator[tuple[str, PromptmuxService]]:
    settings = ServeSettings(registry=build_registry(tmp_path / "registry").uri, request_timeout_s=30,
                             engine=EngineConfig(base_model=BASE, max_new_tokens=64))
    with serve_locally(settings) as served:
        yield served


def test_a_step_that_raises_fails_the_rows_in_flight_and_the_loop_serves_on(live_server) -> None:
    url, service = live_server
    scheduler = service.client.core.scheduler
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

    service.client.core.scheduler.step = step_that_kills_the_thread
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


EXTREMES = {
    "integer": [0, -1, 1, 2**31, 2**63, 2**64, -(2**64), 10**40, 1.5, "7", None, True, [], {}],
    "number": [0, -0.0, 1e-39, 1e-30, 5e-324, 1e308, -1e308, math.nan, math.inf, -math.inf, 2**64, "1", None, []],
    "string": ["", "\ud800", "a\udfffb", "\x00", "🦜" * 300, "x" * 5000, "../../etc", 0, None, ["x"], {}],
    "boolean": [True, False, 0, "yes", None],
    "array": [[], [""], ["\ud800"], ["x"] * 200, [None], [[]], "x", None],
}
VALID = {  # a normal body per endpoint (sampling, so that every parameter counts), bent a few fields at a time
    "/v1/generate": {"task": "act-as", "input": "a poet",
                     "params": {"max_new_tokens": 4, "temperature": 0.8, "top_k": 20, "seed": 1}},
    "/v1/classify": {"task": "grooming", "input": "kind staff"},
    "/v1/completions": {"model": "summarize", "prompt": "a day", "max_tokens": 4, "temperature": 0.8, "seed": 1},
    "/v1/chat/completions": {"model": "summarize", "messages": [{"role": "user", "content": "a day"}], "max_tokens": 4,
                             "temperature": 0.8, "seed": 1, "logprobs": True, "top_logprobs": 2, "n": 2},
}
NORMAL = [  # greedy and seeded sampling, three tasks, both kinds
    ("/v1/generate", {"task": "act-as", "input": "a chef", "params": {"max_new_tokens": 12, "min_new_tokens": 12}}),
    ("/v1/generate", {"task": "summarize", "input": "the meeting", "params": {"max_new_tokens": 10, "temperature": 0.9,
                                                                          "top_p": 0.9, "seed": 7}}),
    ("/v1/classify", {"task": "grooming", "input": "Lovely staff, my dog looks great"}),
    ("/v1/completions", {"model": "act-as@2", "prompt": "a judge", "max_tokens": 8, "seed": 3, "temperature": 1.2}),
    ("/v1/chat/completions", {"model": "act-as", "messages": [{"role": "user", "content": "a coach"}], "max_tokens": 8,
                              "seed": 5, "temperature": 0.7, "n": 2}),
]


def fields(schema: dict, spec: dict, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, JSON type) of every leaf field of a request body schema, through $refs and anyOf."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from fields(sub, spec, (*path, name))
        return
    kinds = [option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"]
    for option in kinds:
        if "$ref" in option or "properties" in option:
            yield from fields(option, spec, path)
            return
    yield path, kinds[0].get("type", "string") if kinds else "string"


def bent(body: dict, path: tuple[str, ...], value: object) -> dict:
    body = json.loads(json.dumps(body))
    node = body
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
    node[path[-1]] = value
    return body


def without_ids(body: object) -> object:
    """A response without what differs on every request: feedback ids and creation times."""
    if isinstance(body, dict):
        return {k: without_ids(v) for k, v in body.items() if k not in ("id", "ids", "created")}
    if isinstance(body, list):
        return [without_ids(item) for item in body]
    return body


def same(a: object, b: object) -> bool:
    """Equal, except that probabilities may move in the fifth decimal: the engine's torch
    thread count follows the CPUs other processes leave free, and another thread count
    sums in another order."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_extreme_values_in_every_field_of_every_endpoint_give_no_5xx_and_leave_normal_requests_unchanged(
    live_server,
) -> None:
    url, _ = live_server
    spec = httpx.get(f"{url}/openapi.json").json()
    cases = []
    for path, body in VALID.items():
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        leaves = list(fields(schema, spec))
        assert len(leaves) >= 5, (path, leaves)
        cases += [(path, bent(body, leaf, value)) for leaf, kind in leaves for value in EXTREMES[kind]]
        rng = random.Random(path)  # and random combinations of several bent fields
        for _ in range(60):
            combo = body
            for leaf, kind in rng.sample(leaves, k=min(3, len(leaves))):
                combo = bent(combo, leaf, rng.choice(EXTREMES[kind]))
            cases.append((path, combo))

    async def normal_outputs(client: httpx.AsyncClient) -> list[dict]:
        responses = await asyncio.gather(*(client.post(path, json=body) for path, body in NORMAL))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [without_ids(r.json()) for r in responses]

    async def fuzz(client: httpx.AsyncClient, statuses: collections.Counter) -> None:
        for start in range(0, len(cases), 16):
            batch = cases[start: start + 16]
            contents = [json.dumps(body, allow_nan=True) for _, body in batch]  # NaN and Infinity as JSON allows them
            responses = await asyncio.gather(*(
                client.post(path, content=content, headers={"content-type": "application/json"})
                for (path, _), content in zip(batch, contents)))
            for (path, _), content, response in zip(batch, contents, responses):
                statuses[response.status_code] += 1
                assert response.status_code < 500, (path, content[:300], response.text[:300])
                if response.status_code >= 400:
                    assert response.json()["error"]["message"]

    async def run() -> tuple[list[dict], list[list[dict]], collections.Counter]:
        statuses: collections.Counter = collections.Counter()
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            alone = await normal_outputs(client)
            fuzzing = asyncio.create_task(fuzz(client, statuses))
            beside = []
            while not fuzzing.done():
                beside.append(await normal_outputs(client))
            await fuzzing
        return alone, beside, statuses

    alone, beside, statuses = asyncio.run(run())
    print(f"parameter fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}, "
          f"{len(beside)} rounds of normal requests beside it")
    assert len(cases) > 400 and statuses[200] > 0 and len(beside) >= 2
    for outputs in beside:  # token for token and label for label what they give without the fuzz
        assert same(outputs, alone), (outputs, alone)
