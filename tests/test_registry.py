import json
from pathlib import Path

import pytest
import torch
from helpers import random_prompt
from pydantic import ValidationError

from promptmux.core.errors import ConflictError, IncompatiblePromptError, InvalidArtifactError, NotFoundError
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """Each test here runs on a local folder and on the S3 server (`conftest.s3_server`)."""
    if request.param == "s3":
        return Registry(f"{request.getfixturevalue('s3_bucket')}/registry")
    return Registry(str(tmp_path / "registry"))


def test_versions_increase_and_resolve(registry: Registry, task: str, llama_fp: BaseModelFingerprint) -> None:
    first = registry.versions.register(task, random_prompt(seed=1), llama_fp, metrics={"accuracy": 0.5})
    second = registry.versions.register(task, random_prompt(rows=6, seed=2), llama_fp, parent_version=1, note="longer")
    assert (first.version, second.version) == (1, 2)
    assert registry.aliases.resolve(task).version == 2
    assert registry.aliases.resolve(task, "latest").version == 2
    assert registry.aliases.resolve(task, 1).sha256 == first.sha256
    assert registry.aliases.resolve(task, "1").metrics == {"accuracy": 0.5}
    manifest, tensor = registry.versions.load_prompt(task, 2)
    tensor = tensor.embeddings
    assert manifest.parent_version == 1 and manifest.note == "longer"
    assert torch.equal(tensor, random_prompt(rows=6, seed=2))
    assert [v.version for v in registry.versions.all(task)] == [1, 2]


def test_registered_versions_are_never_overwritten(registry: Registry, task: str, llama_fp) -> None:
    registry.versions.register(task, random_prompt(seed=1), llama_fp)
    tensor_file = f"tasks/{task}/versions/1/adapter_model.safetensors"
    before = registry.storage.read_bytes(tensor_file)
    registry.versions.register(task, random_prompt(seed=2), llama_fp)
    assert registry.storage.read_bytes(tensor_file) == before
    assert registry.storage.publish_dir(f"tasks/{task}/versions/1", {"adapter_model.safetensors": b"y"}) is False
    assert registry.storage.read_bytes(tensor_file) == before


def test_aliases_and_rollouts(registry: Registry, task: str, llama_fp) -> None:
    for seed in range(3):
        registry.versions.register(task, random_prompt(seed=seed), llama_fp)
    registry.aliases.set(task, "production", 1)
    registry.aliases.set(task, "staging", 3)
    assert registry.aliases.resolve(task, "production").version == 1
    registry.aliases.set(task, "production", 2)
    assert registry.aliases.of(task) == {"production": 2, "staging": 3}
    registry.aliases.delete(task, "staging")
    assert registry.aliases.of(task) == {"production": 2}
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        registry.aliases.resolve(task, "staging")
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.aliases.set(task, "canary", 9)

    spec = RolloutSpec(variants=[RolloutVariant(version=2, weight=90), RolloutVariant(version=3, weight=10)])
    registry.rollouts.set(task, spec)
    stored = registry.rollouts.get(task)
    assert [(v.version, v.weight, v.name) for v in stored.variants] == [(2, 90, "v2"), (3, 10, "v3")]
    registry.rollouts.clear(task)
    assert registry.rollouts.get(task) is None
    with pytest.raises(NotFoundError):
        registry.rollouts.clear(task)


@pytest.mark.parametrize(
    "variants, message",
    [
        ([], "at least 1"),
        ([{"version": 1, "weight": 1}, {"version": 1, "weight": 2}], "only once"),
        ([{"version": 1, "weight": 0}], "greater than 0"),
        ([{"version": 1, "weight": 1, "name": "../x"}], "invalid variant name"),
    ],
)
def test_bad_rollouts_are_refused(variants: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutSpec.model_validate({"variants": variants})


def test_archive_is_refused_while_in_use(registry: Registry, task: str, llama_fp) -> None:
    for seed in range(3):
        registry.versions.register(task, random_prompt(seed=seed), llama_fp)
    registry.aliases.set(task, "production", 3)
    registry.rollouts.set(task, RolloutSpec(variants=[RolloutVariant(version=2, weight=1)]))
    with pytest.raises(ConflictError, match="alias 'production'"):
        registry.archive(task, 3)
    with pytest.raises(ConflictError, match="rollout"):
        registry.archive(task, 2)
    registry.aliases.set(task, "production", 1)
    registry.archive(task, 3)
    assert registry.versions.latest(task).version == 2
    assert registry.aliases.resolve(task, 3).version == 3  # still loadable by number
    with pytest.raises(ConflictError, match="archived"):
        registry.aliases.set(task, "staging", 3)
    assert [v.version for v in registry.versions.all(task, include_archived=False)] == [1, 2]


def test_task_creation(registry: Registry, llama_fp: BaseModelFingerprint) -> None:
    spec = TaskSpec(
        name="grooming", kind="classification", template="Comment: {input}\nSatisfaction:\n",
        labels={"0": "0", "1": "1"}, base_model="tiny-random-llama",
    )
    registry.tasks.create(spec, llama_fp)
    assert registry.tasks.get("grooming").spec == spec
    assert registry.tasks.names() == ["grooming"]
    with pytest.raises(ConflictError, match="already exists"):
        registry.tasks.create(spec, llama_fp)
    assert registry.tasks.create(spec, llama_fp, exist_ok=True).spec == spec
    other = llama_fp.model_copy(update={"embedding_sha256": "0" * 64})
    with pytest.raises(ConflictError, match="embedding_sha256"):
        registry.tasks.create(spec, other, exist_ok=True)
    with pytest.raises(NotFoundError, match="unknown task 'nope'"):
        registry.versions.latest("nope")
    with pytest.raises(NotFoundError, match="no active versions"):
        registry.versions.latest("grooming")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"template": "no placeholder"}, "must contain"),
        ({"kind": "classification", "labels": {"yes": "yes"}}, "at least two labels"),
        ({"kind": "generation", "labels": {"a": "a", "b": "b"}}, "only meaningful"),
        ({"kind": "regression"}, "classification"),
    ],
)
def test_bad_task_specs_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec.model_validate({"name": "t", "base_model": "m", **spec})


def test_template_substitution_is_literal() -> None:
    spec = TaskSpec(name="t", base_model="m", template="Q: {input} {other}")
    assert spec.render("a {input} b") == "Q: a {input} b {other}"


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.randn(128), "2-D"),
        (torch.randn(2, 4, 128), "2-D"),
        (torch.ones(4, 128, dtype=torch.int64), "float32, bfloat16 or float16"),
        (torch.full((4, 128), float("nan")), "NaN or Inf"),
        (torch.full((4, 128), float("inf")), "NaN or Inf"),
        (torch.empty(0, 128), "1..4096 virtual tokens"),
        ([[0.0] * 128], "must be a tensor"),
    ],
)
def test_malformed_tensors_are_refused(registry: Registry, task: str, llama_fp, tensor, message: str) -> None:
    with pytest.raises(InvalidArtifactError, match=message):
        registry.versions.register(task, tensor, llama_fp)
    assert registry.versions.all(task) == []


def test_incompatible_prompts_are_refused_saying_what_differs(registry: Registry, task: str, llama_fp) -> None:
    with pytest.raises(IncompatiblePromptError, match="token_dim 64 != base model hidden_size 128"):
        registry.versions.register(task, random_prompt(cols=64), llama_fp)
    other_model = llama_fp.model_copy(update={"vocab_size": 50000, "embedding_sha256": "f" * 64})
    with pytest.raises(IncompatiblePromptError, match="vocab_size: 384 != 50000.*embedding_sha256"):
        registry.versions.register(task, random_prompt(), other_model)
    assert registry.versions.all(task) == []


def test_bf16_prompts_keep_their_dtype(registry: Registry, task: str, llama_fp) -> None:
    manifest = registry.versions.register(task, random_prompt().to(torch.bfloat16), llama_fp)
    assert manifest.dtype == "bfloat16"
    assert registry.versions.load_prompt(task, 1)[1].embeddings.dtype == torch.bfloat16


def test_verify_detects_altered_and_truncated_files(registry: Registry, task: str, llama_fp) -> None:
    for seed in range(3):
        registry.versions.register(task, random_prompt(seed=seed), llama_fp)
    registry.aliases.set(task, "production", 3)
    assert all(result.ok for result in registry.verify())

    storage = registry.storage  # edits behind the registry's back, as a disk fault or a person would make
    altered = f"tasks/{task}/versions/1/adapter_model.safetensors"
    data = bytearray(storage.read_bytes(altered))
    data[-1] ^= 0x01
    storage.write_bytes(altered, bytes(data))
    truncated = f"tasks/{task}/versions/2/adapter_model.safetensors"
    storage.write_bytes(truncated, storage.read_bytes(truncated)[:50])
    storage.write_bytes(f"tasks/{task}/versions/3/adapter_config.json", b"{not json")

    problems = {result.version: result.problem for result in registry.verify() if not result.ok}
    assert "sha256" in problems[1]
    assert "not a readable safetensors file" in problems[2]
    assert "not valid JSON" in problems[3]
    with pytest.raises(InvalidArtifactError, match="sha256"):
        registry.versions.load_prompt(task, 1)


def test_verify_reports_dangling_alias(registry: Registry, task: str, llama_fp) -> None:
    registry.versions.register(task, random_prompt(), llama_fp)
    registry.storage.write_bytes(f"tasks/{task}/aliases/production.json",
                                 json.dumps({"version": 7, "updated_at": "2026-01-01T00:00:00Z"}).encode())
    problems = [r.problem for r in registry.verify() if not r.ok]
    assert problems == ["alias 'production' points at missing version 7"]


def test_fsspec_memory_backend(llama_fp: BaseModelFingerprint) -> None:
    registry = Registry("memory://promptmux-test-registry")
    registry.tasks.create(TaskSpec(name="mem", base_model="tiny-random-llama"), llama_fp)
    for seed in range(3):
        registry.versions.register("mem", random_prompt(seed=seed), llama_fp)
    registry.aliases.set("mem", "production", 2)
    assert registry.aliases.resolve("mem", "production").version == 2
    assert registry.versions.uri("mem", 2) == "memory://promptmux-test-registry/tasks/mem/versions/2"
    assert torch.equal(registry.versions.load_prompt("mem", 3)[1].embeddings, random_prompt(seed=2))
    assert all(r.ok for r in registry.verify()) and len(registry.verify()) == 3
    # a version directory without its manifest (a writer that died mid-upload) is invisible
    registry.storage.write_bytes("tasks/mem/versions/4/adapter_model.safetensors", b"partial")
    assert registry.versions.latest("mem").version == 3
    assert registry.versions.register("mem", random_prompt(seed=9), llama_fp).version == 5


def test_default_registry_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTMUX_REGISTRY", str(tmp_path / "from-env"))
    assert Registry().uri == str(tmp_path / "from-env")
    monkeypatch.delenv("PROMPTMUX_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Registry().uri == str(tmp_path / "xdg" / "promptmux" / "registry")


def test_the_feedback_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Whoever reads the key forges feedback ids: it is written 0600, whatever the umask."""
    registry = Registry(str(tmp_path / "registry"))
    key = registry.outcomes.feedback_key()
    path = tmp_path / "registry" / "keys" / "feedback.key"
    assert path.stat().st_mode & 0o777 == 0o600 and registry.outcomes.feedback_key() == key
