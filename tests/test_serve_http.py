"""End to end over real HTTP: Ray Serve on a local cluster, two replicas, live registry edits."""

import asyncio
import collections
import concurrent.futures
import itertools
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import ray
import schemathesis
import torch
from helpers import BASE, build_registry, free_port, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from ray import serve
from schemathesis import GenerationMode

from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from promptmux.registry.policy import RolloutPolicy, SequentialTest
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine
from promptmux.serving.hosting.controller_deployment import RolloutControllerDeployment
from promptmux.serving.hosting.deployment import PromptmuxDeployment
from promptmux.serving.hosting.local_cluster import init_ray
from promptmux.serving.runtime.feedback import FeedbackIds
from promptmux.serving.runtime.settings import ServeSettings


@pytest.fixture(scope="module")
def ray_logs() -> Iterator[Path]:
    """A local Ray cluster for this module: the folder every one of its processes logs to."""
    yield init_ray(2, log_to_driver=False)
    ray.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_logs: Path) -> Iterator[tuple[str, Registry]]:
    registry = build_registry(tmp_path_factory.mktemp("serve") / "registry")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.5, max_inputs_per_request=8,
                             controller_interval_s=0.3,
                             engine=EngineConfig(base_model=BASE, max_batch_size=16, max_new_tokens=64))
    app = PromptmuxDeployment.options(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    controller = RolloutControllerDeployment.bind(settings.replica_args())
    serve.run(app.bind(settings.replica_args(), None, controller), name="promptmux", route_prefix="/")
    tight = ServeSettings(registry=registry.uri, api_token="s3cret", max_body_bytes=2048, request_timeout_s=1.0,
                          engine=EngineConfig(base_model=BASE, max_batch_size=1, max_waiting=1, max_new_tokens=8000,
                                              max_model_len=8100))  # rotary positions go on past the tiny model's 2,048
    app = PromptmuxDeployment.options(name="tight", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    serve.run(app.bind(tight.replica_args()), name="tight", route_prefix="/tight")
    yield f"http://127.0.0.1:{port}", registry
    serve.shutdown()


@pytest.fixture(scope="module")
def reference(served) -> Engine:
    return Engine(EngineConfig(base_model=BASE, dtype="float32"), served[1].versions)


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


async def burst(url: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))


def test_mixed_task_burst_matches_the_engine_alone(served, reference: Engine) -> None:
    url, registry = served
    words = ["a poet", "a chef", "the meeting", "a long day", "They were kind", "Rude staff", "x", "a logistician"]
    requests = []
    for i in range(24):
        text = words[i % len(words)]
        task = ("act-as", "summarize", "grooming")[i % 3]
        path = "/v1/classify" if task == "grooming" else "/v1/generate"
        requests.append((path, {"task": task, "input": text, "version": 1 if task == "act-as" else None}))
    responses: list[httpx.Response] = []
    for _ in range(5):  # Ray's router may send one burst to one replica (the other busy): send another
        responses += asyncio.run(burst(url, requests))
        if len({r.headers["x-promptmux-replica"] for r in responses}) == 2:
            break
    assert [r.status_code for r in responses] == [200] * len(responses)
    for (path, body), response in zip(requests * (len(responses) // len(requests)), responses):
        output = response.json()["outputs"][0]
        assert output["task"] == body["task"]
        entry = registry.tasks.get(body["task"]).spec
        manifest = registry.versions.get(body["task"], output["version"])
        ids = reference.inputs.encode(entry.render(body["input"]))
        if path == "/v1/generate":
            expected = generate(reference, [GenerationRow(reference.prompt(manifest), ids, entry.generation)])[0]
            assert output["token_ids"] == expected.token_ids
        else:
            row = ClassificationRow(reference.prompt(manifest), ids, reference.inputs.verbalizers(entry.labels))
            expected = reference.classify([row])[0]
            assert output["label"] == expected.label
            assert output["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    replicas = {r.headers["x-promptmux-replica"] for r in responses}
    assert len(replicas) == 2, "both replicas serve every kind of task"


def _wait_for_route(url: str, task: str, key: str, expected) -> None:
    wait_until(lambda: all(httpx.get(f"{url}/v1/tasks/{task}").json()[key] == expected for _ in range(6)), timeout=20)


def test_sticky_rollout_split_and_proportions(served) -> None:
    url, registry = served
    registry.rollouts.set("act-as", RolloutSpec(variants=[RolloutVariant(version=1, weight=50),
                                                         RolloutVariant(version=2, weight=50)]))
    _wait_for_route(url, "act-as", "rollout", json.loads(registry.rollouts.get("act-as").model_dump_json()))
    requests = [("/v1/generate", {"task": "act-as", "input": "hi", "routing_key": f"user-{k}",
                                  "params": {"max_new_tokens": 1}}) for k in range(400)]
    seen: dict[str, set] = collections.defaultdict(set)
    replicas_per_key: dict[str, set] = collections.defaultdict(set)
    for _ in range(2):
        for (_, body), response in zip(requests, asyncio.run(burst(url, requests))):
            assert response.status_code == 200
            seen[body["routing_key"]].add(response.json()["outputs"][0]["variant"])
            replicas_per_key[body["routing_key"]].add(response.headers["x-promptmux-replica"])
    assert all(len(variants) == 1 for variants in seen.values())
    share = sum(variants == {"v1"} for variants in seen.values()) / len(seen)
    assert 0.40 <= share <= 0.60
    assert any(len(replicas) == 2 for replicas in replicas_per_key.values()), "keys crossed replicas and kept variants"

    registry.rollouts.set("act-as", RolloutSpec(variants=[RolloutVariant(version=1, weight=90),
                                                         RolloutVariant(version=3, weight=10)]))
    _wait_for_route(url, "act-as", "rollout", json.loads(registry.rollouts.get("act-as").model_dump_json()))
    unkeyed = [("/v1/generate", {"task": "act-as", "input": "hi", "params": {"max_new_tokens": 1}})] * 300
    variants = collections.Counter(r.json()["outputs"][0]["variant"] for r in asyncio.run(burst(url, unkeyed)))
    assert set(variants) == {"v1", "v3"} and 10 <= variants["v3"] <= 55
    registry.rollouts.clear("act-as")
    _wait_for_route(url, "act-as", "rollout", None)


def test_live_promote_and_rollback_while_requests_flow(served) -> None:
    url, registry = served
    registry.aliases.set("summarize", "production", 1)
    body = {"task": "summarize", "input": "the day", "params": {"max_new_tokens": 2}}
    wait_until(lambda: post(url, "/v1/generate", body).json()["outputs"][0]["variant"] == "production", timeout=20)
    fp = registry.tasks.get("summarize").base_fingerprint
    new = registry.versions.register("summarize", registry.versions.load_prompt("summarize", 1)[1].embeddings * 0.5, fp, parent_version=1)
    stop, observed = time.monotonic() + 60, []

    async def flow(until_version: int) -> float:
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < stop:
                responses = await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(4)))
                assert all(r.status_code == 200 for r in responses)
                versions = {r.json()["outputs"][0]["version"] for r in responses}
                observed.append(versions)
                if versions == {until_version}:
                    return time.monotonic() - start
        raise AssertionError("the alias move never reached the deployment")

    registry.aliases.set("summarize", "production", new.version)
    assert asyncio.run(flow(new.version)) < 5.0
    registry.aliases.set("summarize", "production", 1)
    assert asyncio.run(flow(1)) < 5.0
    registry.aliases.delete("summarize", "production")


def test_corrupt_new_version_is_refused_and_traffic_stays(served) -> None:
    url, registry = served
    registry.aliases.set("grooming", "production", 2)
    body = {"task": "grooming", "input": "Lovely", "routing_key": "k"}
    wait_until(lambda: post(url, "/v1/classify", body).json()["outputs"][0]["version"] == 2, timeout=20)
    fp = registry.tasks.get("grooming").base_fingerprint
    bad = registry.versions.register("grooming", registry.versions.load_prompt("grooming", 2)[1].embeddings + 1, fp)
    tensor_file = Path(registry.versions.uri("grooming", bad.version)) / "adapter_model.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[-3] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    registry.aliases.set("grooming", "production", bad.version)
    wait_until(lambda: f"grooming@{bad.version}" in httpx.get(f"{url}/v1/tasks/grooming").json()["rejected"], timeout=20)
    for _ in range(10):
        response = post(url, "/v1/classify", body)
        assert response.status_code == 200 and response.json()["outputs"][0]["version"] == 2
    pinned = post(url, "/v1/classify", {**body, "version": bad.version})
    assert pinned.status_code == 404 and "sha256" in pinned.json()["error"]["message"]
    metrics = wait_until(lambda: [line for line in httpx.get(f"{url}/metrics").text.splitlines()
                                  if line.startswith("promptmux_rejected_versions_total")
                                  and f'version="{bad.version}"' in line])
    assert metrics


def test_openai_client_plain_and_streaming(served) -> None:
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    model_ids = {model.id for model in client.models.list()}
    assert {"act-as", "summarize", "grooming"} <= model_ids
    plain = client.completions.create(model="act-as@2", prompt="a poet", max_tokens=4, user="alice")
    assert plain.choices[0].finish_reason in ("stop", "length") and plain.usage.completion_tokens <= 4
    served_by = plain.model_extra["promptmux"]
    assert {key: served_by[key] for key in ("task", "version", "variant")} == {"task": "act-as", "version": 2, "variant": "v2"}
    assert served_by["ids"] == [plain.id] and plain.id.startswith("pmx1.")  # the feedback id
    chunks = list(client.completions.create(model="act-as@2", prompt="a poet", max_tokens=4, user="alice", stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id != plain.id
    label = client.completions.create(model="grooming", prompt="Lovely groomer")
    assert label.choices[0].text in ("0", "1")
    with pytest.raises(openai.NotFoundError, match="unknown task"):
        client.completions.create(model="nope", prompt="x")


def test_models_lists_only_what_is_servable_and_follows_archive_unarchive_and_delete(served) -> None:
    url, registry = served
    fp = registry.tasks.get("act-as").base_fingerprint
    registry.tasks.create(TaskSpec(name="retiring", base_model=BASE), fp)
    registry.versions.register("retiring", torch.randn(3, fp.hidden_size), fp)
    registry.aliases.set("retiring", "canary", 1)

    def everywhere(expected: set[str]) -> bool:  # what every replica lists (requests spread over both)
        return all({m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]
                    if m["id"].startswith("retiring")} == expected for _ in range(6))

    wait_until(lambda: everywhere({"retiring", "retiring:canary"}), timeout=15)
    registry.aliases.delete("retiring", "canary")
    registry.archive("retiring", 1)  # its only version: nothing of it can be served
    wait_until(lambda: everywhere(set()), timeout=15)
    refused = post(url, "/v1/generate", {"task": "retiring", "input": "x"})
    assert refused.status_code == 404 and "no servable version" in refused.text
    registry.unarchive("retiring", 1)
    wait_until(lambda: everywhere({"retiring"}), timeout=15)
    registry.delete_task("retiring")
    wait_until(lambda: everywhere(set()), timeout=15)
    for _ in range(4):
        gone = post(url, "/v1/generate", {"task": "retiring", "input": "x"})
        assert gone.status_code == 404 and "unknown task 'retiring'" in gone.text


def test_metrics_are_labelled_by_task_version_and_variant(served) -> None:
    url, _ = served
    post(url, "/v1/generate", {"task": "act-as", "input": "m", "version": 2, "params": {"max_new_tokens": 1}})
    def served_v2(text: str) -> bool:  # scraped from the replica that served it (there are two)
        return any(line.startswith("promptmux_requests_total") and 'variant="v2"' in line for line in text.splitlines())

    text = wait_until(lambda: (t := httpx.get(f"{url}/metrics").text) and served_v2(t) and t)
    for name in ("promptmux_requests_total", "promptmux_request_latency_seconds_bucket", "promptmux_tokens_total",
                 "promptmux_prompt_cache_hits_total", "promptmux_prompt_cache_misses_total",
                 "promptmux_prompt_cache_evictions_total", "promptmux_batch_rows_bucket"):
        assert name in text, name


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/generate", {"task": "nope", "input": "x"}, 404, "unknown task 'nope'"),
        ("/v1/generate", {"task": "act-as", "input": "x", "version": 99}, 404, "no version 99"),
        ("/v1/generate", {"task": "act-as", "input": "x", "alias": "canary"}, 404, "no alias 'canary'"),
        ("/v1/generate", {"task": "../etc", "input": "x"}, 404, "unknown task '../etc'"),
        ("/v1/generate", {"task": "act-as"}, 422, "exactly one of 'input' or 'inputs'"),
        ("/v1/generate", {"task": "act-as", "input": "x", "inputs": ["y"]}, 422, "exactly one"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"top_p": 3}}, 422, "params.top_p"),
        ("/v1/generate", {"task": "act-as", "input": "x", "surprise": 1}, 422, "surprise"),
        ("/v1/generate", {"task": "act-as", "input": "x" * 5000}, 400, "the limit is 2048"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"max_new_tokens": 200}}, 400,
         "max_new_tokens 200 exceeds the limit of 64 (engine.max_new_tokens)"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"max_new_tokens": 5000}}, 400,
         "max_new_tokens 5000 exceeds the limit of 64"),
        ("/v1/completions", {"model": "act-as", "prompt": "x", "max_tokens": 200}, 400,
         "max_tokens 200 exceeds the limit of 64 (engine.max_new_tokens)"),
        ("/v1/completions", {"model": "act-as", "prompt": "x", "max_tokens": 5000}, 400,
         "max_tokens 5000 exceeds the limit of 64"),
        ("/v1/completions", {"model": "act-as@abc", "prompt": "x"}, 400, "expected task@VERSION"),
        ("/v1/generate", {"task": "act-as", "inputs": ["x"] * 9}, 400, "the limit is 8 per request"),
        ("/v1/generate", {"task": "grooming", "input": "x"}, 400, "use /v1/classify"),
        ("/v1/classify", {"task": "act-as", "input": "x"}, 400, "use /v1/generate"),
        ("/v1/completions", {"model": "act-as@0", "prompt": "x"}, 400, "positive integer"),
        ("/v1/completions", {"model": "act-as", "prompt": "x", "n": 17}, 400, "n"),  # OpenAI's status for a bad body
        ("/v1/completions", {"model": "act-as", "prompt": [1, 2]}, 400, "prompt"),
        ("/v1/completions", {"model": "act-as", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        # values the sampler cannot compute with: refused at the edge, naming the field
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"temperature": 1.0, "seed": 2**64}}, 422,
         "params.seed"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"seed": -1}}, 422, "params.seed"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"temperature": 1.0, "repetition_penalty": 1e-39}},
         422, "params.repetition_penalty"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"temperature": 1e-30}}, 422, "params.temperature"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"min_new_tokens": 9, "max_new_tokens": 3}}, 400,
         "min_new_tokens (9) exceeds max_new_tokens (3)"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"min_new_tokens": 60}}, 400,
         "min_new_tokens (60) exceeds max_new_tokens (6)"),
        ("/v1/generate", {"task": "act-as", "input": "x", "params": {"stop": [""]}}, 422, "params.stop.0"),
        ("/v1/completions", {"model": "act-as", "prompt": "x", "seed": 2**70}, 400, "seed"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(served, path: str, body: dict, status: int, message: str) -> None:
    response = post(served[0], path, body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("path, body, status", [
    ("/v1/generate", b'{"task": "act-as", "input": "a\\ud800b"}', 422),
    ("/v1/classify", b'{"task": "grooming", "inputs": ["fine", "a\\udfffb"]}', 422),
    ("/v1/completions", b'{"model": "act-as", "prompt": "a\\ud800b"}', 400),
    ("/v1/generate", b'{"task": "act-as", "input": "fine", "routing_key": "\\ud800"}', 422),
])
def test_lone_surrogates_get_4xx_naming_the_field(served, path: str, body: bytes, status: int) -> None:
    response = httpx.post(f"{served[0]}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert "lone surrogate" in response.json()["error"]["message"]


def test_malformed_json_and_unknown_routes(served) -> None:
    url, _ = served
    response = httpx.post(f"{url}/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/tasks/nope").status_code == 404
    assert httpx.get(f"{url}/v1/tasks").json()["tasks"][0]["task"] == "act-as"
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_streaming_generate_sends_server_sent_events(served) -> None:
    url, _ = served
    body = {"task": "act-as", "inputs": ["a poet", "a chef"], "version": 1, "stream": True,
            "params": {"max_new_tokens": 5}}
    with httpx.stream("POST", f"{url}/v1/generate", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    plain = post(url, "/v1/generate", {**body, "stream": False}).json()["outputs"]
    for index in (0, 1):
        mine = [e for e in events if e["index"] == index]
        assert "".join(e["text"] for e in mine) == plain[index]["text"]
        assert [t for e in mine for t in e["token_ids"]] == plain[index]["token_ids"]
        assert mine[-1]["finish_reason"] == plain[index]["finish_reason"] and mine[-1]["usage"]


AUTH = {"authorization": "Bearer s3cret"}


def test_bearer_token_guards_every_endpoint_but_health(served) -> None:
    url = f"{served[0]}/tight"
    body = {"task": "grooming", "input": "Lovely"}
    assert httpx.post(f"{url}/v1/classify", json=body).status_code == 401
    wrong = httpx.post(f"{url}/v1/classify", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.post(f"{url}/v1/classify", json=body, headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_oversized_bodies_are_refused_with_413(served) -> None:
    url = f"{served[0]}/tight"
    big = {"task": "grooming", "input": "x" * 4000}
    response = httpx.post(f"{url}/v1/classify", json=big, headers=AUTH)
    assert response.status_code == 413 and "limit of 2048 bytes" in response.json()["error"]["message"]
    chunked = httpx.post(f"{url}/v1/classify", content=iter([json.dumps(big).encode()]),
                         headers={**AUTH, "content-type": "application/json"})
    assert chunked.status_code == 413


def test_overload_answers_503_with_retry_after(served) -> None:
    url = f"{served[0]}/tight"
    body = {"task": "act-as", "input": "busy", "params": {"max_new_tokens": 40, "min_new_tokens": 40}}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=AUTH) as client:
            return await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(12)))

    responses = asyncio.run(flood())
    statuses = collections.Counter(r.status_code for r in responses)
    print(f"overload: statuses {dict(statuses)}")
    assert statuses[503] >= 1 and statuses[200] >= 1 and set(statuses) <= {200, 503, 504}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]["message"]


def test_requests_past_their_timeout_get_504_and_free_their_row(served) -> None:
    url = f"{served[0]}/tight"
    # far past the 1 s timeout on any machine (1,000 tokens took under a second here)
    slow = {"task": "act-as", "input": "slow", "params": {"max_new_tokens": 8000, "min_new_tokens": 8000}}
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/generate", json=slow, headers=AUTH, timeout=60)
    assert response.status_code == 504 and "longer than 1 s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5
    quick = {"task": "grooming", "input": "after"}  # the cancelled row no longer holds the single slot
    assert httpx.post(f"{url}/v1/classify", json=quick, headers=AUTH, timeout=10).status_code == 200
    fast = {"task": "act-as", "input": "fast", "params": {"max_new_tokens": 2}}
    assert httpx.post(f"{url}/v1/generate", json=fast, headers=AUTH, timeout=10).status_code == 200


def test_fuzzing_every_endpoint_from_the_openapi_schema_gives_no_5xx(served) -> None:
    url = served[0]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: collections.Counter = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def no_server_error(case) -> None:  # a schemathesis Case
                response = case.call(base_url=url, timeout=60)
                statuses[response.status_code] += 1
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
                if response.status_code >= 400:
                    assert response.json()["error"]["message"]

            try:
                no_server_error()
            except Unsatisfiable:  # nothing invalid can be generated for an operation without inputs
                assert mode is GenerationMode.NEGATIVE
    print(f"fuzzing: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) > 200 and not any(code >= 500 for code in statuses)
    assert any(400 <= code < 500 for code in statuses) and statuses[200] > 0


def test_inputs_and_tokens_never_reach_the_logs(served, ray_logs: Path) -> None:
    url = served[0]
    secret = "private-input-7f3a9c"
    assert post(url, "/v1/classify", {"task": "grooming", "input": secret}).status_code == 200
    assert post(url, "/v1/generate", {"task": "nope", "input": secret}).status_code == 404
    assert any(ray_logs.rglob("*replica*"))
    leaked = [p.name for p in ray_logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


def per_replica(url: str, path: str) -> dict[str, str]:
    """GET `path` until both replicas have answered: replica → response text."""
    texts: dict[str, str] = {}
    wait_until(lambda: texts.update({(r := httpx.get(f"{url}{path}")).headers["x-promptmux-replica"]: r.text})
               or len(texts) == 2)
    return texts


def metric(texts: dict[str, str], prefix: str, *labels: str) -> float:
    """A metric summed over replicas and over the series whose line has every label."""
    return sum(float(line.rsplit(" ", 1)[1]) for text in texts.values() for line in text.splitlines()
               if line.startswith(prefix) and all(label in line for label in labels))


def test_a_thousand_clients_that_leave_mid_stream_are_counted_as_cancelled_and_leave_no_trace(served, ray_logs: Path) -> None:
    url, _ = served
    body = {"task": "act-as", "input": "leaving", "stream": True, "params": {"max_new_tokens": 64, "min_new_tokens": 64}}

    async def leave_after_first_event(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/generate", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    return

    async def cut(count: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(count // 8):
                await asyncio.gather(*(leave_after_first_event(client) for _ in range(8)))

    def resident_mb(pids: list[int]) -> list[float]:
        return [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]

    asyncio.run(cut(200))  # warm up: first-use allocations are not a leak
    before = per_replica(url, "/metrics")
    pids = [int(replica.rsplit(":", 1)[1]) for replica in sorted(before)]
    started_mb = resident_mb(pids)
    asyncio.run(cut(1000))
    after = wait_until(lambda: (texts := per_replica(url, "/metrics"))
                       and metric(texts, "promptmux_requests_total", 'status="cancelled"')
                       - metric(before, "promptmux_requests_total", 'status="cancelled"') >= 1000 and texts)
    ended_mb = resident_mb(pids)
    steps = metric(after, "promptmux_batch_rows_count") - metric(before, "promptmux_batch_rows_count")
    print(f"1000 cut streams: {steps:.0f} decode steps, resident MB {started_mb} -> {ended_mb}")
    assert metric(after, "promptmux_requests_total", 'status="cancelled"') \
        - metric(before, "promptmux_requests_total", 'status="cancelled"') == 1000
    assert metric(after, "promptmux_errors_total") == metric(before, "promptmux_errors_total")
    assert steps < 1000 / 8 * 64 / 4  # rows leave within a few steps of their client, not after 64 tokens
    assert all(end - start < 5 for start, end in zip(started_mb, ended_mb))
    assert not [p.name for p in ray_logs.rglob("*replica*") if p.is_file() and b"unexpected error" in p.read_bytes()]


def ab_task(registry: Registry, name: str) -> None:
    """A classification task with two versions and `production` on the first."""
    fp = fingerprint(load_model(BASE, dtype="float32"))
    registry.tasks.create(TaskSpec(name=name, kind="classification", template="Review: {input}\nGood:",
                                  labels={"0": "0", "1": "1"}, base_model=BASE), fp)
    for seed in (5, 6):
        registry.versions.register(name, torch.randn(5, fp.hidden_size, generator=torch.Generator().manual_seed(seed)), fp)
    registry.aliases.set(name, "production", 1)


def probe(url: str, task: str) -> list[httpx.Response]:
    """A burst of 16 classifications of `task`: concurrent, so Ray's router spreads it over the replicas."""
    return asyncio.run(burst(url, [("/v1/classify", {"task": task, "input": f"probe {i}"}) for i in range(16)]))


def on_both_replicas(url: str, task: str, check) -> bool:
    """Whether a probe reached both replicas and every answer passes `check`."""
    responses = probe(url, task)
    return len({r.headers["x-promptmux-replica"] for r in responses}) == 2 and all(check(r) for r in responses)


async def traffic_with_feedback(url: str, task: str, right: dict[str, float], seed: int, until) -> dict[str, int]:
    """Classify, then send each output's gold label: the answer itself with the variant's
    chance in `right`, else the other label. Stops when `until()` holds; requests per variant."""
    rng, served = random.Random(seed), {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for batch in range(150):
            bodies = [{"task": task, "input": f"review {batch}-{i}", "routing_key": f"user-{rng.random()}"} for i in range(20)]
            responses = await asyncio.gather(*(client.post("/v1/classify", json=body) for body in bodies))
            feedback = []
            for response in responses:
                assert response.status_code == 200, response.text
                output = response.json()["outputs"][0]
                served[output["variant"]] = served.get(output["variant"], 0) + 1
                correct = rng.random() < right.get(output["variant"], 0.5)
                gold = output["label"] if correct else ("1" if output["label"] == "0" else "0")
                feedback.append(client.post("/v1/feedback", json={"id": output["id"], "label": gold}))
            assert all(r.status_code == 200 and r.json()["counted"] for r in await asyncio.gather(*feedback))
            if until():
                return served
    raise AssertionError(f"no decision after {sum(served.values())} requests: {served}")


@pytest.mark.parametrize("name, right, winner, decision", [
    ("ab-better", {"control": 0.6, "candidate": 0.9, "v1": 0.6}, 2, "promote"),
    ("ab-worse", {"control": 0.9, "candidate": 0.5, "v1": 0.9}, 1, "rollback"),
])
def test_the_controller_promotes_a_better_candidate_and_rolls_back_a_worse_one(
    served, name: str, right: dict, winner: int, decision: str
) -> None:
    url, registry = served
    ab_task(registry, name)
    wait_until(lambda: on_both_replicas(url, name, lambda r: r.status_code == 200), timeout=30, interval=0.2)
    # the statistics decide here: latency on a loaded machine says nothing of the versions (the guard rails
    # have their own tests), so the latency guard is set out of reach
    registry.rollouts.start(name, RolloutPolicy(control=1, candidate=2, steps=[25, 50], min_samples_per_step=20,
                                                max_p99_latency_ratio=1000.0))
    served_by = asyncio.run(traffic_with_feedback(url, name, right, seed=winner,
                                                  until=lambda: registry.rollouts.policy(name) is None))
    assert registry.aliases.of(name)["production"] == winner and registry.rollouts.get(name) is None
    assert served_by.get("candidate", 0) > 0 and served_by.get("control", 0) > 0
    def ended() -> list:  # the decision's history entry lands just after its split is gone
        return [c for c in registry.history(name) if c.actor == "controller" and c.action in ("promote", "rollback")]

    decided = wait_until(ended, timeout=10)
    history = registry.history(name)
    assert [c.action for c in decided] == [decision]
    assert decided[0].stats["control"]["outcomes"] >= 30 and decided[0].stats["p_value"] <= 0.05
    served_windows = {registry.outcomes.read_served(name, f).replica for f in registry.outcomes.names(name, "serving")}
    assert len(served_windows) == 2  # both replicas reported what they served, for the guard rails
    assert decided[0].stats["candidate"]["requests"] > 0 and decided[0].stats["candidate"]["error_rate"] == 0
    moved = ("controller", "alias") in [(c.actor, c.action) for c in history]
    assert moved == (decision == "promote")  # a rollback leaves production where it was, on the control
    wait_until(lambda: on_both_replicas(url, name, lambda r: r.json()["outputs"][0]["version"] == winner),
               timeout=15, interval=0.2)


def test_feedback_ids_are_checked(served) -> None:
    url, _ = served
    output = post(url, "/v1/classify", {"task": "grooming", "input": "on time"}).json()["outputs"][0]
    generated = post(url, "/v1/generate", {"task": "act-as", "input": "a poet"}).json()["outputs"][0]
    forged = output["id"][:-2] + ("AA" if not output["id"].endswith("AA") else "BB")
    cases = [
        ({"id": "nonsense", "label": "1"}, 400, "malformed feedback id"),
        ({"id": forged, "label": "1"}, 403, "not issued by this deployment"),
        ({"id": output["id"], "label": "maybe"}, 400, "unknown label 'maybe'"),
        ({"id": output["id"]}, 422, "exactly one of 'score' or 'label'"),
        ({"id": generated["id"], "label": "1"}, 400, "send a score"),
        ({"id": generated["id"], "score": 1.5}, 422, "score"),
    ]
    for body, status, message in cases:
        response = post(url, "/v1/feedback", body)
        assert response.status_code == status and message in response.json()["error"]["message"], (body, response.text)
    first = post(url, "/v1/feedback", {"id": output["id"], "label": "1"})
    again = post(url, "/v1/feedback", {"id": output["id"], "label": "1"})
    other = post(url, "/v1/feedback", {"id": output["id"], "label": "0"})
    assert first.json() == {"counted": True} and again.json() == {"counted": False}
    assert other.status_code == 409 and "recorded already, with label '1'" in other.json()["error"]["message"]
    assert post(url, "/v1/feedback", {"id": generated["id"], "score": 0.75}).json() == {"counted": True}


def test_killed_replicas_cost_clients_one_retry_lose_no_acknowledged_feedback_and_answer_in_json(served) -> None:
    """Two replicas die at once by SIGKILL: one of the main app's, under steady load from
    clients that retry once, after it acknowledged feedback; and the one-replica "tight"
    app's, with a request in flight that only the proxy is left to answer."""
    url, registry = served
    name = "ab-durable"
    ab_task(registry, name)
    wait_until(lambda: on_both_replicas(url, name, lambda r: r.status_code == 200), timeout=30, interval=0.2)
    undecided = SequentialTest(min_samples=10_000, max_samples=20_000)
    policy = RolloutPolicy(control=1, candidate=2, steps=[50], test=undecided)
    registry.rollouts.start(name, policy)
    experimental = lambda r: r.json()["outputs"][0]["variant"] in ("control", "candidate")
    wait_until(lambda: on_both_replicas(url, name, experimental), timeout=30, interval=0.2)  # only these outcomes count
    ghost = FeedbackIds(registry.outcomes.feedback_key()).issue("no-such-task", 1, "v1")
    response = post(url, "/v1/feedback", {"id": ghost, "score": 1.0})
    assert response.status_code == 404 and "unknown task 'no-such-task'" in response.json()["error"]["message"]

    async def judged(client: httpx.AsyncClient, i: int) -> tuple[bool, str]:
        output = (await client.post("/v1/classify", json={"task": name, "input": f"r{i}", "routing_key": str(i)})).json()
        right = 0.95 if output["outputs"][0]["variant"] == "candidate" else 0.5
        gold = output["outputs"][0]["label"] if random.Random(i).random() < right else "x"
        gold = gold if gold != "x" else ("1" if output["outputs"][0]["label"] == "0" else "0")
        answer = await client.post("/v1/feedback", json={"id": output["outputs"][0]["id"], "label": gold})
        return answer.json()["counted"], answer.headers["x-promptmux-replica"]

    async def feedback() -> list[tuple[bool, str]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(judged(client, i) for i in range(160)))

    acknowledged = asyncio.run(feedback())
    before = {replica for _, replica in acknowledged}
    assert all(counted for counted, _ in acknowledged) and len(before) == 2
    victim = int(acknowledged[0][1].rsplit(":", 1)[1])  # a replica that acknowledged feedback
    # The tight app allows 8,000 tokens: a request that long is surely still in its replica
    # when it is killed (a 64-token one may already have finished).
    tight = f"{url}/tight"
    tight_victim = int(httpx.get(f"{tight}/healthz").headers["x-promptmux-replica"].rsplit(":", 1)[1])
    long = {"task": "act-as", "input": "x", "params": {"max_new_tokens": 8000, "min_new_tokens": 8000}}
    refusals: list[httpx.Response] = []  # every answer that was not a 200, first attempts and retries
    dropped: list[str] = []  # connections closed without an answer

    async def load_while_killing() -> tuple[list[str], httpx.Response]:
        outcomes: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=10) as client, \
                httpx.AsyncClient(base_url=tight, timeout=60, headers=AUTH) as tight_client:
            async def one() -> None:
                for _ in range(2):  # one retry
                    try:
                        response = await client.post("/v1/classify", json={"task": "grooming", "input": "steady load"})
                    except httpx.HTTPError as exc:
                        dropped.append(type(exc).__name__)
                        continue
                    if response.status_code == 200:
                        outcomes.append("ok")
                        return
                    refusals.append(response)
                outcomes.append("failed")

            async def waves() -> None:
                for _ in range(20):
                    await asyncio.gather(*(one() for _ in range(10)))
                    await asyncio.sleep(0.05)

            async def kill() -> None:
                await asyncio.sleep(0.5)
                os.kill(victim, signal.SIGKILL)
                os.kill(tight_victim, signal.SIGKILL)

            in_flight = asyncio.create_task(tight_client.post("/v1/generate", json=long))
            await asyncio.gather(waves(), kill())
            return outcomes, await in_flight

    outcomes, orphan = asyncio.run(load_while_killing())
    statuses = collections.Counter(response.status_code for response in refusals)
    print(f"replica kill: {outcomes.count('ok')} of {len(outcomes)} succeeded with one retry; "
          f"refusals {dict(statuses)}, dropped connections {collections.Counter(dropped)}")
    assert len(outcomes) == 200 and outcomes.count("ok") / len(outcomes) >= 0.99
    for response in refusals:  # the documented JSON body, whether the replica or the proxy answered
        assert response.headers["content-type"] == "application/json" and response.json()["error"]["message"]
    assert orphan.status_code == 503 and orphan.headers["retry-after"] == "1", orphan.text
    assert "replica serving this request stopped" in orphan.json()["error"]["message"]

    registry.rollouts.start(name, policy.model_copy(update={"test": SequentialTest()}))  # now allowed to decide
    wait_until(lambda: registry.rollouts.policy(name) is None, timeout=30, interval=0.2)
    decision = wait_until(lambda: next((c for c in registry.history(name) if c.action in ("promote", "rollback")), None),
                          timeout=10)  # its history entry lands just after the split is gone
    assert decision.action == "promote"
    assert decision.stats["control"]["outcomes"] + decision.stats["candidate"]["outcomes"] == len(acknowledged)
    def replaced() -> set[str] | None:  # two replicas again, one of them new, both serving the task
        responses = probe(url, name)
        now = {r.headers["x-promptmux-replica"] for r in responses}
        return now if len(now) == 2 and now != before and all(r.status_code == 200 for r in responses) else None

    assert len(wait_until(replaced, timeout=120, interval=0.5) & before) == 1  # the survivor and a new process
    wait_until(lambda: httpx.get(f"{tight}/healthz", timeout=60).status_code == 200, timeout=120, interval=0.5)


QUOTA_WINDOW_S, QUOTA_TOKENS_PER_MINUTE, RESERVED = 3.0, 400, 16


def test_a_token_quota_holds_across_two_replicas_whatever_n_and_inputs(served, tmp_path: Path) -> None:
    """A tenant at 400 tokens a minute (20 per 3 s window: 10 on each of two replicas) sends
    requests of 16 rows (`n` 16 on chat, 16 prompts on completions, 16 inputs on the native
    route) for three windows. In any window it gets at most its limit plus one
    request's reservation per replica, and every answer's headers agree with its message."""
    url = served[0]
    registry = build_registry(tmp_path / "registry")
    _, key = registry.tenants.add("metered", ["act-*"], tokens_per_minute=QUOTA_TOKENS_PER_MINUTE)
    settings = ServeSettings(registry=registry.uri, replicas=2, quota_window_s=QUOTA_WINDOW_S,
                             engine=EngineConfig(base_model=BASE, max_batch_size=16))
    app = PromptmuxDeployment.options(name="quota", num_replicas=2, ray_actor_options={"num_cpus": 0.1})
    serve.run(app.bind(settings.replica_args()), name="quota", route_prefix="/quota")
    base, auth = f"{url}/quota", {"authorization": f"Bearer {key}"}
    bodies = [("/v1/chat/completions", {"model": "act-as", "messages": [{"role": "user", "content": "a poet"}],
                                        "n": 16, "max_tokens": 1}),
              ("/v1/completions", {"model": "act-as", "prompt": [f"p{i}" for i in range(16)], "max_tokens": 1}),
              ("/v1/generate", {"task": "act-as", "inputs": [f"x{i}" for i in range(16)],
                                "params": {"max_new_tokens": 1, "min_new_tokens": 1}})]
    share = QUOTA_TOKENS_PER_MINUTE * QUOTA_WINDOW_S / 60 / 2
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, timeout=60, interval=0.5)
        seen: list[tuple[float, float, int, int]] = []  # sent, answered, status, tokens

        def client(offset: int) -> None:
            with httpx.Client(timeout=60) as http:
                for i in itertools.count(offset):
                    if time.monotonic() > stop:
                        return
                    path, body = bodies[i % len(bodies)]
                    sent = time.monotonic()
                    response = http.post(f"{base}{path}", json=body, headers=auth)
                    assert response.status_code in (200, 429), response.text
                    headers = response.headers
                    assert headers["x-ratelimit-limit-tokens"] == f"{share:g}"
                    remaining = int(headers["x-ratelimit-remaining-tokens"])
                    assert 0 <= remaining <= share and headers["x-ratelimit-reset-tokens"].endswith("s")
                    tokens = 0
                    if response.status_code == 429:
                        message = response.json()["error"]["message"]
                        assert f"has {remaining} of its {share:g} tokens per {QUOTA_WINDOW_S:g} s left" in message
                        assert f"reserves {RESERVED}" in message and int(headers["retry-after"]) >= 1
                    elif path == "/v1/generate":
                        tokens = sum(o["usage"]["completion_tokens"] for o in response.json()["outputs"])
                    else:
                        tokens = response.json()["usage"]["completion_tokens"]
                    seen.append((sent, time.monotonic(), response.status_code, tokens))
                    time.sleep(0.05)

        stop = time.monotonic() + 3 * QUOTA_WINDOW_S
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(4)))
    finally:
        serve.delete("quota")
    served_ok = [(sent, done, tokens) for sent, done, status, tokens in seen if status == 200]
    assert served_ok and len(served_ok) < len(seen)  # some served, some refused
    bound = share * 2 + 2 * RESERVED  # the limit, plus one request's reservation per replica
    for start, _, _ in served_ok:  # requests surely admitted in [start, start + window): sent and answered in it
        inside = sum(tokens for sent, done, tokens in served_ok if start <= sent and done < start + QUOTA_WINDOW_S)
        assert inside <= bound, (inside, bound)
    total = sum(tokens for *_, tokens in served_ok)
    print(f"\nquota: {len(seen)} requests, {len(served_ok)} served, {total} tokens in {3 * QUOTA_WINDOW_S:g} s "
          f"(limit {share * 2:g} per {QUOTA_WINDOW_S:g} s window, at most {bound:g} with one reservation per replica)")


def test_without_a_key_health_says_only_ok_and_the_proxy_keeps_its_route_table(served) -> None:
    url = served[0]
    bare, keyed = httpx.get(f"{url}/tight/healthz"), httpx.get(f"{url}/tight/healthz", headers={"authorization": "Bearer s3cret"})
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}  # no base model, no task count
    assert keyed.json()["status"] == "ok" and keyed.json()["base_model"] == BASE and "tasks" in keyed.json()
    routes = httpx.get(f"{url}/-/routes")
    assert routes.status_code == 401 and routes.json()["error"]["message"] == "the proxy's routes need the admin key"
    assert httpx.get(f"{url}/-/healthz").status_code == 200  # load balancers still probe the proxy
