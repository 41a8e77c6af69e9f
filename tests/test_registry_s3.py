"""The registry on an object store: an S3 API server on 127.0.0.1 (moto) through s3fs.

Everything a user does goes through the real CLI or the Registry API against `s3://`;
version numbers are claimed with conditional writes, so writers in several processes never
take the same number; the change feed tells a reader what changed."""

import json
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest
import torch
from helpers import random_prompt
from writers import Writer

from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry import Registry, TaskSpec
from promptmux.registry.change_feed import HEAD, ChangeFeed


@pytest.fixture
def s3_registry(s3_bucket: str) -> Registry:
    return Registry(f"{s3_bucket}/registry")


def test_a_task_lives_its_whole_life_on_s3_through_the_cli(s3_registry: Registry, s3_bucket: str, llama_fp, cli,
                                                            tmp_path) -> None:
    uri = s3_registry.uri
    s3_registry.tasks.create(TaskSpec(name="sentiment", base_model="tiny-random-llama"), llama_fp)
    for seed in range(3):
        s3_registry.versions.register("sentiment", random_prompt(cols=llama_fp.hidden_size, seed=seed), llama_fp)

    assert cli("registry", "alias", "sentiment", "production", "2", "--registry", uri).code == 0
    assert cli("registry", "rollout", "sentiment", "2=90", "3=10", "--registry", uri).code == 0
    assert cli("registry", "archive", "sentiment", "1", "--registry", uri).code == 0
    refused = cli("registry", "archive", "sentiment", "2", "--registry", uri)
    assert refused.code == 1 and "in use by alias 'production'" in refused.err
    shown = json.loads(cli("registry", "show", "sentiment", "--registry", uri, "--json").out)
    assert shown["aliases"] == {"production": 2}
    assert [v["archived"] for v in shown["versions"]] == [True, False, False]
    assert [v["weight"] for v in shown["rollout"]["variants"]] == [90, 10]
    assert "sentiment" in cli("registry", "list", "--registry", uri).out

    exported = f"{s3_bucket}/exports/sentiment-v3"
    assert cli("registry", "export", "sentiment", "3", exported, "--registry", uri).code == 0
    imported = cli("registry", "import", exported, "--task", "copy", "--registry", uri, "--json")
    assert imported.code == 0, imported.err
    assert json.loads(imported.out)["version"] == 1
    assert torch.equal(s3_registry.versions.load_prompt("copy", 1)[1].embeddings, s3_registry.versions.load_prompt("sentiment", 3)[1].embeddings)
    local = tmp_path / "local-export"
    assert cli("registry", "export", "copy", "1", str(local), "--registry", uri).code == 0
    assert (local / "adapter_model.safetensors").is_file()

    verified = cli("registry", "verify", "--registry", uri)
    assert verified.code == 0 and "verified 4 of 4 entries, 0 problem(s)" in verified.out
    fs = fsspec.filesystem("s3", use_listings_cache=False)
    tensor = f"{uri.removeprefix('s3://')}/tasks/sentiment/versions/3/adapter_model.safetensors"
    fs.pipe_file(tensor, fs.cat_file(tensor)[:-8] + b"\0" * 8)
    broken = cli("registry", "verify", "sentiment", "--registry", uri)
    assert broken.code == 1 and "sentiment@3" in broken.err


def test_four_processes_registering_one_task_on_s3_get_100_distinct_versions(
        s3_registry: Registry, llama_fp: BaseModelFingerprint) -> None:
    s3_registry.tasks.create(TaskSpec(name="shared", base_model="tiny-random-llama"), llama_fp)
    writers = [Writer(s3_registry.uri, llama_fp, 25, seed, rows=4) for seed in range(4)]
    claimed = [version for writer in writers for version in writer.versions(timeout=300)]
    assert sorted(claimed) == list(range(1, 101))
    assert s3_registry.versions.numbers("shared") == list(range(1, 101))
    results = s3_registry.verify("shared")
    assert len(results) == 100 and all(result.ok for result in results), [r for r in results if not r.ok][:3]
    digests = {s3_registry.versions.get("shared", number).sha256 for number in range(1, 101)}
    assert len(digests) == 100  # no version was overwritten by another writer's prompt


def test_change_log_entries_are_claimed_once_each_by_concurrent_writers_on_s3(s3_registry: Registry) -> None:
    log = ChangeFeed(s3_registry.storage)
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda i: ChangeFeed(Registry(s3_registry.uri).storage).append(f"t{i}", "alias"),
                                range(40)))
    assert sorted(numbers) == list(range(40))
    tasks, cursor = log.since(0)
    assert tasks == {f"t{i}" for i in range(40)} and cursor == 40
    s3_registry.storage.write_bytes(HEAD, b"3")  # an advisory head that lags: the next writer probes past it
    assert log.append("late", "alias") == 40
    assert log.since(40) == ({"late"}, 41)
