"""Serving from a registry on an object store (the S3 server of `conftest.s3_server`):
`promptmux serve --replicas 2`, then a two-node Ray cluster on this machine (Ray's own
`cluster_utils.Cluster`, one replica per node). An alias moved in the registry reaches every
replica within 5 seconds, through the change feed; so does a tenant's revocation."""

import asyncio
import json
import signal
import time

import httpx
import psutil
import pytest
import ray
from helpers import BASE, build_registry, free_port, start_serve, wait_until
from ray import serve
from ray.cluster_utils import Cluster

from promptmux.registry import Registry
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.http.deployment import PromptmuxDeployment
from promptmux.serving.runtime.settings import ServeSettings

MOVE_DEADLINE_S = 5.0


ADMIN_KEY = "admin-key-for-scale-out"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def served_by(url: str) -> dict[str, set[int]]:
    """A burst of generations: the versions each replica (by its header) answered with."""
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=ADMIN) as client:
            body = {"task": "act-as", "input": "a poet", "params": {"max_new_tokens": 1}}
            return await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(16)))

    versions: dict[str, set[int]] = {}
    for response in asyncio.run(burst()):
        assert response.status_code == 200, response.text
        versions.setdefault(response.headers["x-promptmux-replica"], set()).add(response.json()["outputs"][0]["version"])
    return versions


def seconds_until_every_replica_serves(url: str, registry: Registry, version: int) -> float:
    """Move `production` of act-as to `version`; seconds until a burst reaches both replicas and
    every answer comes from that version (at most MOVE_DEADLINE_S, or TimeoutError)."""
    wait_until(lambda: len(served_by(url)) == 2, timeout=60, interval=0.5)
    registry.aliases.set("act-as", "production", version)
    moved = time.monotonic()
    wait_until(lambda: (lambda seen: len(seen) == 2 and all(v == {version} for v in seen.values()))(served_by(url)),
               timeout=MOVE_DEADLINE_S, interval=0.1)
    return time.monotonic() - moved


STREAMED = 1000


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


def test_promptmux_serve_with_two_replicas_follows_an_alias_moved_and_a_tenant_revoked_on_s3(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = build_registry(f"{s3_bucket}/registry")
    _, key = registry.tenants.add("team-a", ["act-*"])
    monkeypatch.setenv("PROMPTMUX_API_TOKEN", ADMIN_KEY)
    port = free_port()
    process = start_serve(registry.uri, port, "--replicas", "2", "--replica-cpus", "0.5", "--refresh-interval", "1")
    try:
        url = f"http://127.0.0.1:{port}"
        assert {v for seen in served_by(url).values() for v in seen} == {3}  # act-as: its latest version
        elapsed = seconds_until_every_replica_serves(url, registry, 1)
        print(f"alias move on S3 reached both replicas in {elapsed:.2f} s")
        seen, streamed, ended = asyncio.run(revoked_while_busy(url, registry, key))
        assert streamed == STREAMED and ended > 0  # the stream in flight at the revocation finished
        late = [(status, replica) for since, status, replica in seen if since >= MOVE_DEADLINE_S]
        assert late and {status for status, _ in late} == {401}  # within 5 s every new request is refused...
        assert len({replica for since, status, replica in seen if status == 401}) == 2  # ...by both replicas
        assert httpx.get(f"{url}/metrics", headers=ADMIN).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert key not in output and key not in metrics  # the server log and the metrics never hold a key


def raylet_of(pid: int) -> int:
    """The raylet (one per Ray node) whose worker process `pid` is."""
    for parent in psutil.Process(pid).parents():
        if parent.name() == "raylet" or any("raylet" in part for part in parent.cmdline()[:1]):
            return parent.pid
    raise AssertionError(f"process {pid} is not under a raylet")


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    if ray.is_initialized():
        ray.shutdown()
    # One proxy (both nodes share this machine's ports), which would otherwise keep every
    # request on its own node's replica while that one has room.
    monkeypatch.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def test_two_ray_nodes_serve_from_one_s3_registry_and_both_follow_a_moved_alias(s3_bucket: str, two_nodes) -> None:
    registry = build_registry(f"{s3_bucket}/registry")
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE))
    app = PromptmuxDeployment.options(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.5})
    serve.run(app.bind(settings.replica_args()), name="promptmux", route_prefix="/")
    url = f"http://127.0.0.1:{port}"

    replicas = wait_until(lambda: (lambda seen: seen if len(seen) == 2 else None)(served_by(url)), timeout=60,
                          interval=0.5)
    nodes = {raylet_of(int(replica.rsplit(":", 1)[1])) for replica in replicas}
    assert len(nodes) == 2, f"both replicas run under one Ray node: {replicas}"
    elapsed = seconds_until_every_replica_serves(url, registry, 2)
    print(f"alias move on S3 reached both Ray nodes in {elapsed:.2f} s")
