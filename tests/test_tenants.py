"""Many teams on one endpoint: tenant keys scoped to tasks, quotas, fair admission.

The scope fuzz runs the real app of one replica over real HTTP (uvicorn, no Ray): three
tenants with overlapping and disjoint patterns, the admin key and a client without a key
call every route, with every task (their own, another tenant's, one that does not exist)
and every feedback id (their own, another tenant's, a forged one). Revocation across two
replicas is in `test_serve_cli.py`; the fairness benchmark in `test_bench.py`.
"""

import asyncio
import fnmatch
import gc
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
from helpers import build_registry, serve_locally, wait_until

from promptmux.core.errors import InvalidRequestError, RateLimited
from promptmux.core.fields import GenerationParams
from promptmux.registry import Registry
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.sequence import Sequence
from promptmux.serving.engine.waiting import WaitingQueue
from promptmux.serving.runtime.requests import Call, Query
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings
from promptmux.serving.runtime.tenants import Caller, Quotas

ADMIN_KEY = "admin-key-for-tests"
PATTERNS = {"team-a": ["act-*"], "team-b": ["act-as", "grooming"], "team-c": ["summarize"]}
TASKS = {"act-as", "summarize", "grooming"}
ABSENT = "no-such-task"


def queued(owner: str, weight: float = 1.0) -> Sequence:
    row = GenerationRow(prompt=None, input_ids=[1], params=GenerationParams(), owner=owner, weight=weight)
    return Sequence(row, decode=lambda ids: "")


def admission_order(queue: WaitingQueue) -> list[str]:
    order = []
    while queue.peek() is not None:
        order.append(queue.pop().row.owner)
    return order


def test_admission_is_first_come_first_served_within_a_tenant_and_fair_across_tenants_by_weight() -> None:
    fair, fifo = WaitingQueue(fair=True), WaitingQueue(fair=False)
    flood = [queued("a") for _ in range(12)]
    trickle = [queued("b") for _ in range(3)]
    for queue in (fair, fifo):
        for sequence in [*flood, *trickle]:
            queue.append(sequence)
    assert admission_order(fifo) == ["a"] * 12 + ["b"] * 3  # the trickle waits behind the whole flood
    order = [fair.peek()]
    assert order[0] is flood[0]  # within a tenant: first come, first served
    assert admission_order(fair)[:6] == ["a", "b", "a", "b", "a", "b"]  # one each while both wait

    weighted = WaitingQueue()
    for sequence in [queued("a", weight=3.0) for _ in range(9)] + [queued("b") for _ in range(3)]:
        weighted.append(sequence)
    assert admission_order(weighted) == ["a", "a", "a", "b"] * 3  # shares follow the weights

    cancelled = WaitingQueue()
    first, second = queued("a"), queued("a")
    first.cancelled = True
    cancelled.append(first)
    cancelled.append(second)
    assert cancelled.peek() is second and len(cancelled) == 1


def test_quotas_refuse_past_each_limit_with_openai_headers_and_split_across_replicas(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    rated, _ = registry.tenants.add("rated", ["*"], requests_per_minute=6)
    narrow, _ = registry.tenants.add("narrow", ["*"], concurrency=4)
    quotas = Quotas(replicas=1)
    for _ in range(6):
        quotas.release(quotas.admit(rated, 1, 1), 1)
    with pytest.raises(RateLimited) as refused:
        quotas.admit(rated, 1, 1)
    headers = refused.value.headers
    assert refused.value.limit == "requests" and headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "0" and 1 <= int(headers["Retry-After"]) <= 10
    assert headers["x-ratelimit-reset-requests"].endswith("s")

    two = Quotas(replicas=2)  # each replica holds half of every limit: 2 rows of the 4
    held = [two.admit(narrow, 1, 0), two.admit(narrow, 1, 0)]
    with pytest.raises(RateLimited) as busy:
        two.admit(narrow, 1, 0)
    assert busy.value.limit == "concurrency" and "2 of its 2 rows" in str(busy.value)
    two.release(held.pop(), 0)
    two.admit(narrow, 1, 0)  # one ended: one more fits
    with pytest.raises(InvalidRequestError, match="5 rows .* may have 4 in flight"):
        Quotas(replicas=1).admit(narrow, 5, 0)  # more rows than the whole cap: no retry could help


def test_tokens_are_reserved_for_what_a_request_can_generate_and_given_back_at_its_end(tmp_path: Path) -> None:
    """n x inputs x max tokens are held from admission; what was not generated returns at the
    end; a replica with nothing in its window admits one request up to the tenant's whole
    limit; headers and message tell the same numbers."""
    registry = Registry(str(tmp_path / "registry"))
    tenant, _ = registry.tenants.add("metered", ["*"], tokens_per_minute=200)
    quotas = Quotas(replicas=2)  # 100 tokens a minute here
    first = quotas.admit(tenant, 16, 16 * 5)  # n 16 x 5 max tokens
    assert first.headers["x-ratelimit-limit-tokens"] == "100" and first.headers["x-ratelimit-remaining-tokens"] == "20"
    with pytest.raises(RateLimited) as over:
        quotas.admit(tenant, 4, 4 * 6)  # 24 more do not fit in the 20 left, however few it would generate
    message, headers = str(over.value), over.value.headers
    assert over.value.limit == "tokens" and headers["x-ratelimit-remaining-tokens"] == "20"
    assert "20 of its 100 tokens per 60 s left" in message and "reserves 24" in message
    quotas.release(first, 30)  # generated 30 of the 80 it held: 50 come back
    second = quotas.admit(tenant, 4, 24)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(100 - 30 - 24)

    burst = Quotas(replicas=2).admit(tenant, 30, 150)  # past a replica's share, within the tenant's whole limit: alone, served
    assert burst.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(InvalidRequestError, match="can generate 300 tokens"):
        Quotas(replicas=2).admit(tenant, 30, 300)  # past the whole limit: never


@dataclass
class Fuzz:
    """What the fuzz saw: answers that told a foreign task from an absent one, feedback
    accepted across tenants, requests served without a valid key."""

    revealed: list[str] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)
    keyless: list[str] = field(default_factory=list)
    calls: int = 0
    compared: int = 0  # foreign tasks' answers held against an absent task's


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[tuple[str, Registry, dict[str, str]]]:
    registry = build_registry(tmp_path_factory.mktemp("tenants") / "registry")
    keys = {name: registry.tenants.add(name, patterns, requests_per_minute=100_000)[1]
            for name, patterns in PATTERNS.items()}
    settings = ServeSettings(registry=registry.uri, api_token=ADMIN_KEY, refresh_interval_s=0.5)
    with serve_locally(settings) as (url, _):
        yield url, registry, keys


def visible(tenant: str | None) -> set[str]:
    return TASKS if tenant is None else {t for t in TASKS if any(fnmatch.fnmatchcase(t, p) for p in PATTERNS[tenant])}


def requests_for(task: str) -> list[tuple[str, str, dict | None]]:
    """Every route, naming `task` where a route takes one."""
    return [
        ("POST", "/v1/generate", {"task": task, "input": "a poet", "params": {"max_new_tokens": 2}}),
        ("POST", "/v1/generate", {"task": task, "input": "a poet", "stream": True, "params": {"max_new_tokens": 2}}),
        ("POST", "/v1/classify", {"task": task, "input": "lovely"}),
        ("POST", "/v1/completions", {"model": task, "prompt": "a poet", "max_tokens": 2}),
        ("POST", "/v1/completions", {"model": f"{task}:production", "prompt": "a poet", "max_tokens": 2}),
        ("POST", "/v1/completions", {"model": f"{task}@1", "prompt": "a poet", "max_tokens": 2, "stream": True}),
        ("POST", "/v1/chat/completions", {"model": task, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        ("GET", f"/v1/tasks/{task}", None),
    ]


def answer(client: httpx.Client, method: str, path: str, body: dict | None, key: str | None) -> tuple[int, str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = client.request(method, path, json=body, headers=headers)
    return response.status_code, response.text


def issued_id(client: httpx.Client, task: str, key: str) -> str:
    response = client.post("/v1/generate", json={"task": task, "input": "x", "params": {"max_new_tokens": 1}},
                           headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["id"]


def forged(feedback_id: str) -> str:
    prefix, body, signature = feedback_id.split(".")
    return f"{prefix}.{body}.{'A' * len(signature)}"


def test_scope_fuzz_no_foreign_task_leaks_no_feedback_crosses_tenants_nothing_served_without_a_key(endpoint, caplog) -> None:
    url, registry, keys = endpoint
    caplog.set_level(logging.DEBUG)
    fuzz = Fuzz()
    answered = {"team-a": "act-as", "team-b": "act-as", "team-c": "summarize"}
    with httpx.Client(base_url=url, timeout=60) as client:
        ids = {name: issued_id(client, task, keys[name]) for name, task in answered.items()}  # each tenant's own answer
        callers: dict[str | None, str | None] = {**{name: key for name, key in keys.items()}, None: ADMIN_KEY}
        for tenant, key in callers.items():
            seen = visible(tenant)
            for task in sorted(TASKS | {ABSENT}):
                for method, path, body in requests_for(task):
                    status, text = answer(client, method, path, body, key)
                    fuzz.calls += 1
                    if task in seen or task == ABSENT:
                        continue
                    fuzz.compared += 1
                    absent = answer(client, method, path.replace(task, ABSENT),
                                    json.loads(json.dumps(body).replace(task, ABSENT)) if body else None, key)
                    if (status, text.replace(task, ABSENT)) != absent:
                        fuzz.revealed.append(f"{tenant} {method} {path} {task}: {status} {text[:80]} vs {absent}")
            for name in keys:  # other tenants' ids, and forged ones, all read as forged
                if name == tenant:
                    continue
                for feedback_id in (ids[name], forged(ids[name])):
                    status, text = answer(client, "POST", "/v1/feedback", {"id": feedback_id, "score": 1.0}, key)
                    fuzz.calls += 1
                    if tenant is not None and status == 200:
                        fuzz.crossed.append(f"{tenant} sent feedback on {name}'s answer")
                    if tenant is not None and feedback_id == ids[name]:
                        assert (status, text) == answer(client, "POST", "/v1/feedback",
                                                        {"id": forged(ids[name]), "score": 1.0}, key)
            status, text = answer(client, "GET", "/v1/models", None, key)
            assert status == 200 and {m["id"].split(":")[0] for m in json.loads(text)["data"]} == seen
            status, text = answer(client, "GET", "/v1/tasks", None, key)
            assert status == 200 and {t["task"] for t in json.loads(text)["tasks"]} == seen
            assert answer(client, "GET", "/metrics", None, key)[0] == (200 if tenant is None else 403)
        own = answer(client, "POST", "/v1/feedback", {"id": ids["team-b"], "score": 1.0}, keys["team-b"])
        assert own[0] == 200, own  # the tenant's own answer takes its feedback
        for key in (None, "pmx-not-a-key", keys["team-a"][:-1]):  # no key, a made-up one, one character short
            for task in sorted(TASKS):
                for method, path, body in [*requests_for(task), ("POST", "/v1/feedback", {"id": ids["team-a"], "score": 1}),
                                           ("GET", "/v1/models", None),
                                           ("GET", "/v1/tasks", None), ("GET", "/metrics", None)]:
                    status, _ = answer(client, method, path, body, key)
                    fuzz.calls += 1
                    if status != 401:
                        fuzz.keyless.append(f"{key} {method} {path}: {status}")
        assert answer(client, "GET", "/healthz", None, None)[0] == 200  # load balancers probe without a key
        metrics = client.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert fuzz.calls > 200 and fuzz.compared == 5 * len(requests_for(ABSENT))  # foreign tasks: 2 of a, 1 of b, 2 of c
    assert (fuzz.revealed, fuzz.crossed, fuzz.keyless) == ([], [], [])
    assert 'promptmux_tenant_requests_total{status="ok",tenant="team-a"}' in metrics or \
        'promptmux_tenant_requests_total{tenant="team-a",status="ok"}' in metrics
    assert 'promptmux_tenant_queue_wait_seconds_count{tenant="team-b"}' in metrics
    everything = [metrics, caplog.text] + [path.read_bytes().decode(errors="replace")
                                           for path in Path(registry.uri).rglob("*") if path.is_file()]
    assert not [key for key in keys.values() if any(key in text for text in everything)]  # no key stored or logged


def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_ratelimit_headers(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    _, key = registry.tenants.add("tight", ["act-as"], requests_per_minute=3)
    _, other = registry.tenants.add("other", ["act-as"])
    with serve_locally(ServeSettings(registry=registry.uri)) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        body = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 1}}
        statuses = [client.post("/v1/generate", json=body, headers={"authorization": f"Bearer {key}"})
                    for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        refused = statuses[-1]
        assert refused.headers["x-ratelimit-limit-requests"] == "3" and int(refused.headers["retry-after"]) >= 1
        assert "request rate" in refused.json()["error"]["message"]
        completions = client.post("/v1/completions", json={"model": "act-as", "prompt": "x", "max_tokens": 1},
                                  headers={"authorization": f"Bearer {key}"})
        assert completions.status_code == 429 and completions.json()["error"]["type"] == "rate_limit_error"
        assert client.post("/v1/generate", json=body, headers={"authorization": f"Bearer {other}"}).status_code == 200


def test_a_revoked_key_opens_nothing_from_the_next_refresh_even_when_it_was_the_last(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    _, key = registry.tenants.add("leaving", ["*"])  # the only tenant: revoked, the endpoint stays guarded
    with serve_locally(ServeSettings(registry=registry.uri, refresh_interval_s=0.5)) as (url, _):
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200
        registry.tenants.revoke("leaving")
        revoked = time.monotonic()
        wait_until(lambda: httpx.get(f"{url}/v1/models", headers=headers).status_code == 401, timeout=5)
        assert time.monotonic() - revoked < 5
        assert httpx.get(f"{url}/v1/models").status_code == 401


def test_a_stream_never_read_gives_back_its_tenants_slot_and_stops_its_rows(tmp_path: Path) -> None:
    """A client that leaves between the stream's creation and its first byte: the generator
    never runs, so it is its collection that releases the slot and cancels the rows."""
    registry = build_registry(tmp_path / "registry")
    record, _ = registry.tenants.add("team-a", ["act-*"], concurrency=1)
    service = PromptmuxService(ServeSettings(registry=registry.uri))
    long = ParamsOverride(max_new_tokens=1000, min_new_tokens=1000)
    call = Call(Query(task="act-as", inputs=["a poet"]), endpoint="generate", params=long, stream=True,
                caller=Caller(record))

    async def leave_before_the_first_byte() -> str:
        stream = await service.serve(call)
        with pytest.raises(RateLimited):  # its one slot is taken
            await service.serve(call)
        del stream
        gc.collect()
        answers = await service.serve(replace(call, stream=False, params=ParamsOverride(max_new_tokens=2)))
        return answers.answers[0].finish_reason

    try:
        assert asyncio.run(leave_before_the_first_byte()) == "length"
        metrics = service.metrics.render().decode()
        assert re.search(r'promptmux_requests_total\{endpoint="generate",status="cancelled",task="act-as".*\} 1\.0', metrics)
        assert re.search(r'promptmux_tenant_requests_total\{status="cancelled",tenant="team-a"\} 1\.0', metrics)
        steps = service.metrics.batch_size.collect()[0].samples
        decoded = next(s.value for s in steps if s.name.endswith("_count"))
        assert decoded < 200  # the 1,000-token row left at its next step, long before its end
    finally:
        service.shutdown()
