"""The prompt cache under pressure: single-flight loads, a running byte count, refusals."""

import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from helpers import BASE, PROMPT_LENGTHS, build_registry, fill_registry, serve_locally, wait_until

from promptmux.core.errors import IncompatiblePromptError
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.registry.version_store import VersionStore
from promptmux.serving.engine.batching import Row
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.prompt_cache import MiB, PromptCache, ServingFormat
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.settings import ServeSettings


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    registry = fill_registry(tmp_path_factory.mktemp("cache"), "tiny-random-llama", extra_versions=3)
    return Engine(EngineConfig(dtype="float32"), registry.versions)


class CountedLoads:
    """The version store's own `load_prompt`, counted, each call held until `release` is set."""

    def __init__(self, versions: VersionStore) -> None:
        self.real, self.calls, self.release = versions.load_prompt, 0, threading.Event()

    def __call__(self, task: str, version: int):
        self.calls += 1
        self.release.wait(10)
        return self.real(task, version)


def test_two_threads_missing_one_prompt_load_it_once_and_pin_its_kv_once(engine: Engine, monkeypatch) -> None:
    versions = engine.loader
    loads = CountedLoads(versions)
    monkeypatch.setattr(versions, "load_prompt", loads)
    cache = PromptCache(versions, 64 * MiB, engine.prompts.serving)
    manifest = versions.latest("beta")
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(manifest))) for _ in range(2)]
    threads[0].start()
    while loads.calls == 0:
        time.sleep(0.005)
    threads[1].start()
    while cache.hits == 0:  # the second thread found the load in progress
        time.sleep(0.005)
    loads.release.set()
    for thread in threads:
        thread.join(10)
    assert loads.calls == 1 and cache.misses == 1
    assert got[0] is got[1]
    prompt = got[0]
    assert prompt.kv is None  # loading never runs the model
    engine.prompts = cache
    ids = engine.inputs.encode("pin me")
    first = engine.logits([Row(prompt, ids)])
    kv = prompt.kv
    assert kv is not None
    second = engine.logits([Row(cache.get(manifest), ids)])
    assert prompt.kv is kv and torch.equal(first, second)  # one KV forward, reused


def test_a_prompt_that_overflows_the_serving_dtype_is_refused(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model("tiny-random-llama", dtype="float32"))
    registry.tasks.create(TaskSpec(name="loud", base_model="tiny-random-llama"), fp)
    tensor = torch.full((4, fp.hidden_size), 0.5)
    tensor[2, 7] = 1e6  # finite in float32, beyond float16's 65504
    registry.versions.register("loud", tensor, fp)
    manifest = registry.versions.latest("loud")
    half = PromptCache(registry.versions, 64 * MiB, ServingFormat(fp, torch.float16, torch.device("cpu")))
    with pytest.raises(IncompatiblePromptError, match=r"loud@1 does not fit float16: values up to 1e\+06 overflow it"):
        half.get(manifest)
    assert half.stats().entries == 0 and half.stats().bytes == 0
    full = PromptCache(registry.versions, 64 * MiB, ServingFormat(fp, torch.float32, torch.device("cpu")))
    assert float(full.get(manifest).embeds.max()) == 1e6  # the same file serves in float32
    assert torch.equal(registry.versions.load_prompt("loud", 1)[1].embeddings, tensor)  # and the registry is untouched


def test_the_byte_count_runs_and_an_entry_bigger_than_the_cache_is_refused(engine: Engine) -> None:
    versions = engine.loader
    serving = engine.prompts.serving
    manifests = [m for task in PROMPT_LENGTHS for m in versions.all(task)]
    unbounded = PromptCache(versions, 1 << 40, serving)
    largest = max(unbounded.get(manifest).nbytes for manifest in manifests)
    cache = PromptCache(versions, int(largest * 2.5), serving)
    for i in range(40):
        cache.get(manifests[(i * 7) % len(manifests)])
        stats = cache.stats()
        resident = [cache.resident(m) for m in manifests]
        assert stats.bytes == sum(entry.nbytes for entry in resident if entry is not None) <= cache.capacity_bytes
    assert cache.evictions > 0
    kv_bytes = serving.kv_bytes_per_token * PROMPT_LENGTHS["gamma"]
    assert kv_bytes > 0
    tiny = PromptCache(versions, kv_bytes, serving)
    with pytest.raises(IncompatiblePromptError, match=r"gamma@1 needs .* KiB with its KV; the whole prompt cache holds .* KiB"):
        tiny.get(versions.get("gamma", 1))
    assert tiny.stats().entries == 0
    assert tiny.get(versions.get("alpha", 1)).num_virtual_tokens == PROMPT_LENGTHS["alpha"]


def test_only_the_engine_thread_runs_the_model_handlers_and_the_refresh_only_load(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, engine=EngineConfig(base_model=BASE))
    with serve_locally(settings) as (url, service):
        callers: set[str] = set()
        service.client.engine.model.register_forward_pre_hook(lambda *_: callers.add(threading.current_thread().name))
        fp = service.client.engine.fingerprint
        registry.versions.register("grooming", torch.randn(6, fp.hidden_size), fp)  # a new version, found by the refresh
        new = registry.versions.latest("grooming")
        wait_until(lambda: service.client.engine.prompts.resident(new) is not None, timeout=20)
        assert service.client.engine.prompts.resident(new).kv is None  # validated and loaded, not run
        assert callers == set()
        with httpx.Client(base_url=url, timeout=30) as client:
            for body in ({"task": "grooming", "input": "on time", "version": new.version},
                         {"task": "act-as", "inputs": ["a chef", "a poet"]}):
                path = "/v1/classify" if body["task"] == "grooming" else "/v1/generate"
                assert client.post(path, json=body).status_code == 200
            streamed = client.post("/v1/generate", json={"task": "summarize", "input": "a day", "stream": True})
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        assert service.client.engine.prompts.resident(new).kv is not None  # pinned at its first batch
        assert callers == {"promptmux-engine"}
