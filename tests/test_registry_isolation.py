"""One malformed registry file hurts only its own task: the server keeps that task's last
good routes and refreshes every other task; a server starts on such a registry; every
CLI message names the file."""

import httpx
import pytest
from helpers import BASE, build_registry, serve_locally, wait_until

from promptmux.core.errors import CorruptFileError
from promptmux.registry import Registry, RolloutSpec, RolloutVariant
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.runtime.settings import ServeSettings

BROKEN = ["rollout.json", "aliases/production.json", "task.json"]


def served_version(url: str, task: str) -> int:
    path = "/v1/classify" if task == "grooming" else "/v1/generate"
    response = httpx.post(f"{url}{path}", json={"task": task, "input": "kind staff"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["version"]


def unreadable(url: str, task: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'promptmux_unreadable_task{{task="{task}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_file_freezes_only_its_task(tmp_path, broken: str) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("act-as", "production", 2)
    # files broken and mended at rest leave no change-feed entry: the full scan finds them
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, full_scan_interval_s=0.5,
                             engine=EngineConfig(base_model=BASE))
    with serve_locally(settings) as (url, _):
        assert served_version(url, "act-as") == 2
        assert served_version(url, "grooming") == 2  # its latest version
        broken_file = tmp_path / "registry" / "tasks" / "act-as" / broken
        good = broken_file.read_bytes() if broken_file.exists() else None
        broken_file.write_text('{"version": 1, "upda')  # truncated
        registry.aliases.set("grooming", "production", 1)
        wait_until(lambda: served_version(url, "grooming") == 1, timeout=10, interval=0.2)
        wait_until(lambda: unreadable(url, "act-as") == 1.0, timeout=10, interval=0.2)
        assert unreadable(url, "grooming") == 0.0
        assert served_version(url, "act-as") == 2  # its last good routes

        if good is None:
            broken_file.unlink()
        else:
            broken_file.write_bytes(good)
        registry.aliases.set("act-as", "production", 3)
        wait_until(lambda: unreadable(url, "act-as") == 0.0, timeout=10, interval=0.2)
        wait_until(lambda: served_version(url, "act-as") == 3, timeout=10, interval=0.2)


def test_a_server_starts_on_a_registry_with_a_broken_task_and_serves_the_others(tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    (tmp_path / "registry" / "tasks" / "act-as" / "rollout.json").write_text("{oops")
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE))
    with serve_locally(settings) as (url, _):
        assert served_version(url, "grooming") in (1, 2)
        assert unreadable(url, "act-as") == 1.0
        response = httpx.post(f"{url}/v1/generate", json={"task": "act-as", "input": "x"}, timeout=30)
        assert response.status_code == 404 and "unknown task 'act-as'" in response.json()["error"]["message"]


def test_cli_messages_name_the_broken_file(cli, tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    rollout = tmp_path / "registry" / "tasks" / "act-as" / "rollout.json"
    rollout.write_text('{"variants": [')
    with pytest.raises(CorruptFileError, match="act-as/rollout.json is corrupt"):
        registry.rollouts.get("act-as")
    for args in (("registry", "list"), ("registry", "show", "act-as"), ("registry", "rollout", "act-as")):
        result = cli(*args, "--registry", registry.uri)
        assert result.code == 1 and f"{rollout} is corrupt" in " ".join(result.err.split()), args
        assert "Traceback" not in result.err
    verify = cli("registry", "verify", "--registry", registry.uri)
    assert verify.code == 1 and "rollout.json is corrupt" in verify.err and "verified" in verify.out
    cleared = cli("registry", "rollout", "act-as", "--clear", "--registry", registry.uri)
    assert cleared.code == 0 and not rollout.exists()
    assert cli("registry", "verify", "--registry", registry.uri).code == 0
    assert Registry(registry.uri).show("act-as").rollout is None


def gauge(url: str, name: str, labels: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return None


def classify(url: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json={"task": "grooming", "input": "kind staff", **extra}, timeout=30)


def test_a_corrupt_production_version_is_refused_loudly_never_rerouted_and_retried_once_restored(tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("grooming", "production", 1)
    tensor = tmp_path / "registry" / "tasks" / "grooming" / "versions" / "1" / "adapter_model.safetensors"
    good = tensor.read_bytes()
    tensor.write_bytes(bytes(range(256)) * 8)
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, retry_rejected_s=0.5,
                             engine=EngineConfig(base_model=BASE))
    with serve_locally(settings) as (url, _):
        for response in (classify(url), classify(url, alias="production")):
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            assert "grooming:production points at version 1, which is not servable" in message
        assert classify(url, version=2).json()["outputs"][0]["version"] == 2  # other versions still serve
        assert gauge(url, "promptmux_broken_alias", 'alias="production",task="grooming"') == 1.0

        tensor.write_bytes(good)  # restored at rest: verified clean, served again without a restart
        wait_until(lambda: classify(url).status_code == 200, timeout=15, interval=0.2)
        served = classify(url).json()["outputs"][0]
        assert (served["version"], served["variant"]) == (1, "production")
        assert gauge(url, "promptmux_broken_alias", 'alias="production",task="grooming"') == 0.0


def test_an_alias_moved_onto_a_corrupt_version_falls_back_to_its_previous_version_and_says_so(tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("grooming", "production", 2)
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, retry_rejected_s=60,
                             engine=EngineConfig(base_model=BASE))
    with serve_locally(settings) as (url, _):
        assert classify(url).json()["outputs"][0]["version"] == 2
        tensor = tmp_path / "registry" / "tasks" / "grooming" / "versions" / "1" / "adapter_model.safetensors"
        tensor.write_bytes(bytes(range(256)) * 8)
        registry.aliases.set("grooming", "production", 1)
        wait_until(lambda: gauge(url, "promptmux_broken_alias", 'alias="production",task="grooming"') == 1.0,
                   timeout=10, interval=0.2)
        served = classify(url).json()["outputs"][0]
        assert (served["version"], served["variant"]) == (2, "production-fallback")
        assert Registry(registry.uri).aliases.records("grooming")["production"].previous == 2


def test_an_alias_records_the_version_it_pointed_at_before_its_last_move(tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    moves = [(1, None), (2, 1), (2, 1), (3, 2), (1, 3)]
    for version, previous in moves:
        registry.aliases.set("act-as", "production", version)
        record = registry.aliases.records("act-as")["production"]
        assert (record.version, record.previous) == (version, previous)


def test_a_rollout_variant_on_a_corrupt_version_falls_back_declared_and_the_other_variant_keeps_its_share(
    tmp_path,
) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.aliases.set("act-as", "production", 1)
    registry.rollouts.set("act-as", RolloutSpec(variants=[RolloutVariant(version=2, weight=50),
                                                         RolloutVariant(version=3, weight=50)]))
    tensor = tmp_path / "registry" / "tasks" / "act-as" / "versions" / "3" / "adapter_model.safetensors"
    good = tensor.read_bytes()
    tensor.write_bytes(bytes(range(256)) * 8)
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, retry_rejected_s=0.5,
                             engine=EngineConfig(base_model=BASE))

    def served_by_key() -> dict[str, tuple[int, str]]:
        served = {}
        for key in (f"user-{i}" for i in range(24)):
            body = {"task": "act-as", "input": "a poet", "routing_key": key, "params": {"max_new_tokens": 1}}
            output = httpx.post(f"{url}/v1/generate", json=body, timeout=30).json()["outputs"][0]
            served[key] = (output["version"], output["variant"])
        return served

    with serve_locally(settings) as (url, _):
        broken = served_by_key()
        assert set(broken.values()) == {(2, "v2"), (1, "v3-fallback")}  # v3's share goes to production, declared
        assert gauge(url, "promptmux_broken_rollout_variant", 'task="act-as",variant="v3"') == 1.0

        tensor.write_bytes(good)  # restored: the variant serves again, for the same keys
        wait_until(lambda: gauge(url, "promptmux_broken_rollout_variant", 'task="act-as",variant="v3"') == 0.0,
                   timeout=15, interval=0.2)
        healed = served_by_key()
        assert {key: variant for key, (_, variant) in healed.items()} == \
            {key: variant.removesuffix("-fallback") for key, (_, variant) in broken.items()}

    for version in (1, 2, 3):  # with nothing to fall back to, a clear 503 instead
        path = tmp_path / "registry" / "tasks" / "act-as" / "versions" / str(version) / "adapter_model.safetensors"
        path.write_bytes(bytes(range(256)) * 8)
    with serve_locally(settings) as (url, _):
        refused = httpx.post(f"{url}/v1/generate", json={"task": "act-as", "input": "x"}, timeout=30)
        assert refused.status_code == 503 and "rollout variant" in refused.json()["error"]["message"]
