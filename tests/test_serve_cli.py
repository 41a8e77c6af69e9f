"""`promptmux serve` as a user runs it: a subprocess that owns a local Ray cluster.

One server, one scenario (each start of a cluster costs seconds): two replicas on a registry
on an object store (the S3 server of `conftest.s3_server`), started from a folder whose
subfolders share the packages' names and without --base-model. An alias moved in the
registry reaches both replicas within 5 seconds, through the change feed, and so does a
tenant's revocation; it serves through the openai client, with a rollout, streaming and
metrics; then SIGTERM drains it with requests in flight, and it is gone without a Ray
process left."""

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import torch
from helpers import (
    BASE,
    MOVE_DEADLINE_S,
    build_registry,
    free_port,
    seconds_until_every_replica_serves,
    served_by,
    start_serve,
    wait_until,
)

from promptmux.models.embedded import resolve_model_path
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec

ADMIN_KEY = "admin-key-for-serve"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
STREAMED = 1000

GRACE_S = 4.0
SHORT = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 48, "min_new_tokens": 48}}
# far longer than the grace period on any machine (1,024 tokens took 1.2 s here)
LONG = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 8000, "min_new_tokens": 8000}}


async def _stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event) -> dict:
    """A streamed generation: its events, and whether it ended with [DONE]."""
    events, done = [], False
    async with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                started.set()
    return {"status": response.status_code, "events": events, "done": done, "ended_at": time.monotonic()}


async def _plain(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/v1/generate", json=body)
    return {"status": response.status_code, "body": response.json(), "ended_at": time.monotonic()}


def serves_as_a_user_expects(url: str, registry: Registry) -> None:
    """Every task, one of them recorded under the embedded model's cache folder (one base model
    by fingerprint); a 50/50 rollout reaching both versions; a stream; labelled metrics; an
    alias moved while serving, served within 5 s."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY)
    users = ("ann", "bob", "cyd", "dan", "eve", "fay")
    registry.rollouts.set("act-as", RolloutSpec(variants=[RolloutVariant(version=1, weight=50),
                                                         RolloutVariant(version=2, weight=50)]))

    def variants() -> set[str]:
        return {client.completions.create(model="act-as", prompt="a poet", max_tokens=3, user=user)
                .model_extra["promptmux"]["variant"] for user in users}

    seen = wait_until(lambda: (answered := variants()) <= {"v1", "v2"} and answered, timeout=10, interval=0.2)
    stream = client.completions.create(model="summarize", prompt="a day", max_tokens=3, stream=True)
    assert [chunk.choices[0].finish_reason for chunk in stream][-1] in ("stop", "length")
    classified = httpx.post(f"{url}/v1/classify", json={"task": "grooming", "input": "Lovely"}, headers=ADMIN, timeout=60)
    assert classified.status_code == 200 and classified.json()["outputs"][0]["label"] in ("0", "1")
    generated = httpx.post(f"{url}/v1/generate", json={"task": "by-path", "input": "hi", "params": {"max_new_tokens": 2}},
                           headers=ADMIN, timeout=60)
    assert generated.status_code == 200, generated.text
    metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
    for variant in seen:
        assert f'variant="{variant}"' in metrics
    assert 'task="summarize"' in metrics
    registry.aliases.set("summarize", "production", 1)  # served within 5 s, or wait_until raises
    wait_until(lambda: client.completions.create(model="summarize", prompt="a day", max_tokens=1)
               .model_extra["promptmux"]["variant"] == "production", timeout=5, interval=0.2)


async def drain(url: str, process) -> tuple[list[dict], list[dict], list[httpx.Response], float]:
    """SIGTERM with short and long requests in flight, then new requests while draining."""
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=ADMIN) as client:
        streams_started = [asyncio.Event() for _ in range(8)]
        finite = [asyncio.create_task(_stream(client, SHORT, streams_started[i])) for i in range(6)]
        finite += [asyncio.create_task(_plain(client, SHORT)) for _ in range(6)]
        cut = [asyncio.create_task(_stream(client, LONG, streams_started[6 + i])) for i in range(2)]
        cut += [asyncio.create_task(_plain(client, LONG)) for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in streams_started)), 60)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = []
        while len(refused) < 3 and time.monotonic() - signalled < GRACE_S:
            response = await client.post("/v1/classify", json={"task": "grooming", "input": "late"})
            if response.status_code == 503:
                refused.append(response)
            await asyncio.sleep(0.1)
        return await asyncio.gather(*finite), await asyncio.gather(*cut), refused, signalled


async def revoked_while_busy(url: str, registry: Registry, key: str) -> tuple[list[tuple[float, int, str]], int, float]:
    """Tenant `key` streams a long generation and sends short ones, on both replicas; it is
    revoked while the stream runs. Every short request (seconds since the revocation, status,
    replica), how many tokens the stream got, and when it ended (seconds since the revocation)."""
    headers = {"authorization": f"Bearer {key}"}
    body = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 1}}
    seen: list[tuple[float, int, str]] = []
    revoked_at: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
        streaming = asyncio.Event()

        async def stream() -> tuple[int, float]:
            long = {**body, "stream": True, "params": {"max_new_tokens": STREAMED, "min_new_tokens": STREAMED}}
            tokens = 0
            async with client.stream("POST", "/v1/generate", json=long) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line.removeprefix("data: "))
                        assert "error" not in event, event
                        tokens += len(event["token_ids"])
                        streaming.set()
            return tokens, time.monotonic() - revoked_at[0] if revoked_at else -1.0

        async def short() -> None:
            await streaming.wait()
            while not revoked_at or time.monotonic() - revoked_at[0] < MOVE_DEADLINE_S + 1:
                response = await client.post("/v1/generate", json=body)
                since = time.monotonic() - revoked_at[0] if revoked_at else -1.0
                seen.append((since, response.status_code, response.headers["x-promptmux-replica"]))
                if not revoked_at and len({r for _, s, r in seen if s == 200}) == 2:
                    await asyncio.to_thread(registry.tenants.revoke, "team-a")
                    revoked_at.append(time.monotonic())

        (streamed, ended), _ = await asyncio.gather(stream(), short())
    return seen, streamed, ended


def test_promptmux_serve_follows_edits_on_s3_serves_then_drains_on_sigterm_and_leaves_nothing_behind(
        tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = build_registry(f"{s3_bucket}/registry")
    _, key = registry.tenants.add("team-a", ["act-*"])
    monkeypatch.setenv("PROMPTMUX_API_TOKEN", ADMIN_KEY)
    fp = registry.tasks.get("grooming").base_fingerprint
    registry.tasks.create(TaskSpec(name="by-path", base_model=resolve_model_path(BASE)), fp)
    registry.versions.register("by-path", torch.randn(3, fp.hidden_size), fp)
    for name in ("serving", "tasks"):  # a working folder beside folders named as the packages
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the working directory shadowed promptmux')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(registry.uri, port, "--replicas", "2", "--replica-cpus", "0.5", "--refresh-interval", "1",
                          "--drain-timeout", str(GRACE_S), "--max-new-tokens", "8000",
                          "--max-model-len", "8100",  # the tiny model's rotary positions go on past its 2,048
                          cwd=tmp_path, base_model=None)
    children = {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
    try:
        assert {v for versions in served_by(url, ADMIN).values() for v in versions} == {3}  # act-as: its latest version
        elapsed = seconds_until_every_replica_serves(url, registry, 1, ADMIN)
        print(f"alias move on S3 reached both replicas in {elapsed:.2f} s")
        seen, streamed, ended = asyncio.run(revoked_while_busy(url, registry, key))
        serves_as_a_user_expects(url, registry)
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        with httpx.Client(base_url=url) as browser:  # the console, mounted at /ui by every replica
            assert browser.post("/ui/login", data={"key": ADMIN_KEY}).status_code == 303
            console_tasks = {row["name"] for row in browser.get("/ui/api/tasks").json()["tasks"]}
        finite, cut, refused, signalled = asyncio.run(drain(url, process))
    except BaseException:  # stop the server (and the Ray cluster it started) before failing
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
        raise
    output, _ = process.communicate(timeout=120)
    assert streamed == STREAMED and ended > 0  # the stream in flight at the revocation finished
    late = [(status, replica) for since, status, replica in seen if since >= MOVE_DEADLINE_S]
    assert late and {status for status, _ in late} == {401}  # within 5 s every new request is refused...
    assert len({replica for since, status, replica in seen if status == 401}) == 2  # ...by both replicas
    assert console_tasks == set(registry.tasks.names())
    assert key not in output and key not in metrics  # the server log and the metrics never hold a key
    assert process.returncode == 0 and "draining" in output and "shadowed" not in output, output[-3000:]
    assert "base model tiny-random-llama: the one every task" in output
    assert "shutting down Serve and the local Ray cluster" in output
    assert "graceful_shutdown failed" not in output and "infinite retries" not in output  # a clean stop, said cleanly
    for result in finite:  # in flight at SIGTERM, finished after it, in full
        assert result["status"] == 200 and result["ended_at"] > signalled
        if "events" in result:
            assert result["done"] and result["events"][-1]["finish_reason"] == "length"
            assert sum(len(event["token_ids"]) for event in result["events"]) == 48
        else:
            assert result["body"]["outputs"][0]["usage"]["completion_tokens"] == 48
    assert len(refused) == 3
    for response in refused:  # new requests while draining: 503, JSON, Retry-After
        assert response.headers["retry-after"] and "shutting down" in response.json()["error"]["message"]
    for result in cut:  # still running at the deadline: ended with an error, never a dropped connection
        assert GRACE_S - 0.5 < result["ended_at"] - signalled < GRACE_S + 10
        if "events" in result:
            assert result["done"] and "shut down before this request finished" in result["events"][-1]["error"]
        else:
            assert result["status"] == 503 and "shut down" in result["body"]["error"]["message"]
    leftovers = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not leftovers, [psutil.Process(pid).cmdline()[:3] for pid in leftovers]
