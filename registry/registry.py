"""The registry: tasks, their immutable prompt versions, aliases and rollouts.

Layout under the root (any fsspec URL)::

    tasks/<task>/task.json                   TaskRecord (spec + base-model fingerprint)
    tasks/<task>/versions/<n>/               a PEFT adapter directory + promptmux.json
    tasks/<task>/aliases/<alias>.json        AliasRecord
    tasks/<task>/rollout.json                RolloutSpec
    tasks/<task>/archived/<n>                marker: version n is archived
    changes/<n>.json                         the change log (`changes.py`): one entry per routing edit

Versions are claimed lock-free (`Storage.publish_dir` refuses an existing directory, so
concurrent writers retry with the next number; on object stores the claim is a
conditional write, so this holds across machines); alias, rollout and archive edits take
the task's lock because each checks the others (an alias may not point at an archived
version, a version may not be archived while something points at it). That lock is a
`flock` on local disks and in-process only on object stores: run alias and rollout edits of
one task from one place at a time there (registrations may come from anywhere).
Every edit that changes routing ends with an entry in the change log.
"""

import os
import secrets
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
from pydantic import BaseModel, ValidationError

from promptmux.registry.changes import ChangeLog
from promptmux.registry.errors import (
    ConflictError,
    CorruptFileError,
    InvalidArtifactError,
    NotFoundError,
    PromptmuxError,
    describe,
)
from promptmux.registry.history import MANUAL, Change
from promptmux.registry.layout import CONFIG_FILE, MANIFEST_FILE, TENSOR_FILE
from promptmux.registry.names import validate_alias, validate_name
from promptmux.registry.policy import Outcome, RolloutPolicy, ServedWindow
from promptmux.registry.schemas import (
    AliasRecord,
    BaseModelFingerprint,
    PromptVersion,
    RolloutSpec,
    RolloutVariant,
    TaskRecord,
    TaskSpec,
    TaskView,
    VersionView,
    utc_now,
)
from promptmux.registry.storage import LocalStorage, Storage, open_storage

if TYPE_CHECKING:
    import torch

REGISTRY_ENV = "PROMPTMUX_REGISTRY"
MAX_CLAIM_ATTEMPTS = 10_000
SchemaT = TypeVar("SchemaT", bound=BaseModel)


def default_registry_uri() -> str:
    """`$PROMPTMUX_REGISTRY`, else a per-user directory."""
    configured = os.environ.get(REGISTRY_ENV)
    if configured:
        return configured
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return str(data_home / "promptmux" / "registry")


@dataclass(frozen=True)
class VerifyResult:
    task: str
    version: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None



def _artifact() -> ModuleType:
    """Tensors' code (torch, safetensors, peft), loaded when a tensor is first touched: metadata
    commands such as `registry list` never pay for it."""
    from promptmux.registry import artifact

    return artifact

class Registry:
    """Versioned soft prompts per task, on local disk or any fsspec URL."""

    def __init__(self, uri: str | None = None, create: bool = True) -> None:
        self.storage: Storage = open_storage(uri or default_registry_uri(), create)
        self.changes = ChangeLog(self.storage)

    @property
    def uri(self) -> str:
        return self.storage.uri

    # ------------------------------------------------------------------ tasks
    def create_task(self, spec: TaskSpec, base_fingerprint: BaseModelFingerprint, exist_ok: bool = False) -> TaskRecord:
        """Create a task; with `exist_ok`, return the existing one if its base model matches."""
        record = TaskRecord(spec=spec, base_fingerprint=base_fingerprint)
        if self.storage.create(f"{_task_rel(spec.name)}/task.json", record.model_dump_json(indent=2).encode()):
            self.changes.append(spec.name, "task")
            return record
        if not exist_ok:
            raise ConflictError(f"task {spec.name!r} already exists")
        existing = self.get_task(spec.name)
        problem = existing.base_fingerprint.misfit(base_fingerprint)
        if problem:
            raise ConflictError(f"task {spec.name!r} exists for another base model: {problem}")
        return existing

    def get_task(self, task: str) -> TaskRecord:
        rel = f"{_task_rel(task)}/task.json"
        data = self._read_or_none(rel)
        if data is None:
            raise NotFoundError(f"unknown task {task!r}")
        return self._parse(TaskRecord, data, rel)

    def has_task(self, task: str) -> bool:
        return self.storage.exists(f"{_task_rel(task)}/task.json")

    def list_tasks(self) -> list[str]:
        return [name for name in self.storage.listdir("tasks") if self.has_task(name)]

    # --------------------------------------------------------------- versions
    def register(
        self,
        task: str,
        embeddings: "torch.Tensor",
        base_fingerprint: BaseModelFingerprint,
        *,
        init_method: str = "random",
        init_text: str | None = None,
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        data_fingerprint: str | None = None,
        parent_version: int | None = None,
        note: str = "",
    ) -> PromptVersion:
        """Store `embeddings` as the task's next version and return its manifest."""
        record = self.get_task(task)
        tensor = _artifact().validate_prompt_tensor(embeddings)
        _artifact().check_fits(tensor, base_fingerprint, record.base_fingerprint)
        if parent_version is not None:
            self.get_version(task, parent_version)
        digest = _artifact().tensor_sha256(tensor)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            number = max(self._claimed_numbers(task), default=0) + 1
            manifest = PromptVersion(
                task=task,
                version=number,
                num_virtual_tokens=tensor.shape[0],
                token_dim=tensor.shape[1],
                dtype=_artifact().dtype_name(tensor),
                base_model=record.spec.base_model,
                base_fingerprint=record.base_fingerprint,
                init_method=init_method,
                init_text=init_text,
                training=training or {},
                metrics=metrics or {},
                data_fingerprint=data_fingerprint,
                parent_version=parent_version,
                note=note,
                sha256=digest,
            )
            if self.storage.publish_dir(_version_rel(task, number), _artifact().version_files(manifest, tensor)):
                self.changes.append(task, "version")
                return manifest
        raise ConflictError(f"could not claim a version number for task {task!r}")

    def versions(self, task: str, include_archived: bool = True) -> list[PromptVersion]:
        self.get_task(task)
        archived = self.archived_versions(task)
        return [
            self.get_version(task, number)
            for number in self.version_numbers(task)
            if include_archived or number not in archived
        ]

    def get_version(self, task: str, version: int) -> PromptVersion:
        rel = f"{_version_rel(task, version)}/{MANIFEST_FILE}"
        data = self._read_or_none(rel)
        if data is None:
            self.get_task(task)
            raise NotFoundError(f"task {task!r} has no version {version}")
        return self._parse(PromptVersion, data, rel)

    def latest(self, task: str) -> PromptVersion:
        archived = self.archived_versions(task)
        live = [number for number in self.version_numbers(task) if number not in archived]
        if not live:
            self.get_task(task)
            raise NotFoundError(f"task {task!r} has no active versions")
        return self.get_version(task, max(live))

    def resolve(self, task: str, ref: int | str | None = None) -> PromptVersion:
        """A version by number, alias name, or `latest`/None."""
        if ref is None or ref == "latest":
            return self.latest(task)
        if isinstance(ref, int) or ref.isdigit():
            return self.get_version(task, int(ref))
        aliases = self.aliases(task)
        if ref not in aliases:
            raise NotFoundError(f"task {task!r} has no alias {ref!r}")
        return self.get_version(task, aliases[ref])

    def version_uri(self, task: str, version: int) -> str:
        return self.storage.url(_version_rel(task, version))

    def load_prompt(self, task: str, version: int) -> tuple[PromptVersion, "torch.Tensor"]:
        """Manifest and tensor of a version, checked against the manifest's sha256 and shape."""
        manifest = self.get_version(task, version)
        source, rel = f"{task}@{version}", f"{_version_rel(task, version)}/{TENSOR_FILE}"
        local = self.storage.local_path(rel)
        if local is not None and os.path.isfile(local):
            tensor = _artifact().read_tensor_file(local, source)
        else:
            tensor = _artifact().decode_tensor(self.storage.read_bytes(rel), source)
        problem = _mismatch(manifest, tensor)
        if problem:
            raise InvalidArtifactError(f"{source}: {problem}")
        return manifest, tensor

    def archive(self, task: str, version: int) -> None:
        """Retire a version: it stays loadable by number but is no longer `latest`."""
        with self._task_lock(task):
            self.get_version(task, version)
            users = [f"alias {name!r}" for name, target in self.aliases(task).items() if target == version]
            rollout = self.rollout(task)
            if rollout and any(variant.version == version for variant in rollout.variants):
                users.append("the rollout")
            if users:
                raise ConflictError(f"version {version} of {task!r} is in use by {', '.join(users)}; move them first")
            self.storage.write_bytes(f"{_task_rel(task)}/archived/{version}", utc_now().isoformat().encode())
            self.changes.append(task, "archive")

    def archived_versions(self, task: str) -> set[int]:
        return {int(name) for name in self.storage.listdir(f"{_task_rel(task)}/archived") if name.isdigit()}

    # ------------------------------------------------------ aliases, rollouts
    def aliases(self, task: str) -> dict[str, int]:
        return {alias: record.version for alias, record in self.alias_records(task).items()}

    def alias_records(self, task: str) -> dict[str, AliasRecord]:
        rel = f"{_task_rel(task)}/aliases"
        result = {}
        for filename in self.storage.listdir(rel):
            if filename.endswith(".json") and not filename.startswith("."):
                data = self._read_or_none(f"{rel}/{filename}")
                if data is not None:
                    result[filename.removesuffix(".json")] = self._parse(AliasRecord, data, f"{rel}/{filename}")
        return result

    def set_alias(self, task: str, alias: str, version: int, actor: str = MANUAL, reason: str = "") -> None:
        validate_alias(alias)
        with self._task_lock(task):
            self._check_servable(task, version)
            current = self.alias_records(task).get(alias)
            if current is None or current.version == version:
                previous = current.previous if current else None
            else:
                previous = current.version
            record = AliasRecord(version=version, previous=previous)
            self.storage.write_bytes(_alias_rel(task, alias), record.model_dump_json().encode())
            self.changes.append(task, "alias")
            self.record_change(task, Change(actor=actor, action="alias", reason=reason, details={
                "alias": alias, "version": version, "was": current.version if current else None}))

    def delete_alias(self, task: str, alias: str, actor: str = MANUAL, reason: str = "") -> None:
        validate_alias(alias)
        with self._task_lock(task):
            was = self.aliases(task).get(alias)
            if was is None:
                raise NotFoundError(f"task {task!r} has no alias {alias!r}")
            self.storage.remove(_alias_rel(task, alias))
            self.changes.append(task, "alias")
            self.record_change(task, Change(actor=actor, action="alias-delete", reason=reason,
                                            details={"alias": alias, "was": was}))

    def rollout(self, task: str) -> RolloutSpec | None:
        rel = f"{_task_rel(task)}/rollout.json"
        data = self._read_or_none(rel)
        return None if data is None else self._parse(RolloutSpec, data, rel)

    def set_rollout(self, task: str, spec: RolloutSpec, actor: str = MANUAL, reason: str = "") -> None:
        with self._task_lock(task):
            for variant in spec.variants:
                self._check_servable(task, variant.version)
            self.storage.write_bytes(f"{_task_rel(task)}/rollout.json", spec.model_dump_json(indent=2).encode())
            self.changes.append(task, "rollout")
            self._stop_auto_rollout(task, actor)
            split = {variant.name: f"{variant.version}={variant.weight:g}" for variant in spec.variants}
            self.record_change(task, Change(actor=actor, action="rollout", reason=reason, details=split))

    def clear_rollout(self, task: str, actor: str = MANUAL, reason: str = "") -> None:
        """Remove the rollout file, also one that cannot be parsed any more."""
        with self._task_lock(task):
            if not self.storage.exists(f"{_task_rel(task)}/rollout.json"):
                raise NotFoundError(f"task {task!r} has no rollout")
            self.storage.remove(f"{_task_rel(task)}/rollout.json")
            self.changes.append(task, "rollout")
            self._stop_auto_rollout(task, actor)
            self.record_change(task, Change(actor=actor, action="rollout-clear", reason=reason))

    # ------------------------------------------------------ automatic rollouts
    def auto_rollout(self, task: str) -> RolloutPolicy | None:
        rel = f"{_task_rel(task)}/rollout-policy.json"
        data = self._read_or_none(rel)
        return None if data is None else self._parse(RolloutPolicy, data, rel)

    def _stop_auto_rollout(self, task: str, actor: str) -> None:
        """A person who sets or clears a split by hand takes over from the controller."""
        if actor == MANUAL and self.storage.exists(f"{_task_rel(task)}/rollout-policy.json"):
            self.storage.remove(f"{_task_rel(task)}/rollout-policy.json")

    def set_auto_rollout(self, task: str, policy: RolloutPolicy, actor: str = MANUAL, reason: str = "") -> None:
        """Start (or move on) an automatic rollout: the policy, and the split of its current step."""
        share = policy.share
        spec = RolloutSpec(variants=[RolloutVariant(version=policy.control, weight=100 - share, name="control"),
                                     RolloutVariant(version=policy.candidate, weight=share, name="candidate")])
        self.set_rollout(task, spec, actor, reason)
        self.storage.write_bytes(f"{_task_rel(task)}/rollout-policy.json", policy.model_dump_json(indent=2).encode())

    def end_auto_rollout(self, task: str, winner: int, actor: str, reason: str) -> None:
        """Move `production` to the winner, then clear the rollout and its policy."""
        self.set_alias(task, "production", winner, actor, reason)
        self.storage.remove(f"{_task_rel(task)}/rollout-policy.json")
        if self.rollout(task) is not None:
            self.clear_rollout(task, actor, reason)

    def feedback_key(self) -> bytes:
        """The key serving replicas sign feedback ids with, made on first use: every replica
        reading this registry, on any node, shares it."""
        rel = "keys/feedback.key"
        data = self._read_or_none(rel)
        if data is None:
            with self.storage.lock("keys/feedback"):
                data = self._read_or_none(rel)
                if data is None:
                    data = secrets.token_hex(32).encode()
                    self.storage.write_bytes(rel, data)
        return bytes.fromhex(data.decode())

    def record_outcome(self, outcome: Outcome) -> bool:
        """Store one piece of feedback durably; False if that request's feedback is already stored."""
        rel = f"{_task_rel(outcome.task)}/outcomes/{outcome.file_name()}"
        if self.storage.exists(rel):
            return False
        self.storage.write_bytes(rel, outcome.model_dump_json().encode())
        return True

    def outcome_files(self, task: str, kind: str = "outcomes") -> list[str]:
        """Names of a task's outcome files (`kind="serving"`: its served windows)."""
        return [name for name in self.storage.listdir(f"{_task_rel(task)}/{kind}") if name.endswith(".json")]

    def read_outcome(self, task: str, name: str) -> Outcome:
        rel = f"{_task_rel(task)}/outcomes/{name}"
        return self._parse(Outcome, self.storage.read_bytes(rel), rel)

    def record_served(self, task: str, window: ServedWindow) -> None:
        """Append one replica's window of what it served (an immutable file of its own)."""
        self.storage.write_bytes(f"{_task_rel(task)}/serving/{window.file_name()}", window.model_dump_json().encode())

    def read_served(self, task: str, name: str) -> ServedWindow:
        rel = f"{_task_rel(task)}/serving/{name}"
        return self._parse(ServedWindow, self.storage.read_bytes(rel), rel)

    # ---------------------------------------------------------------- history
    def record_change(self, task: str, change: Change) -> None:
        """Append one change to the task's history (an immutable file of its own)."""
        self.storage.write_bytes(f"{_task_rel(task)}/history/{change.file_name()}", change.model_dump_json().encode())

    def history(self, task: str) -> list[Change]:
        """Every recorded change of a task, oldest first."""
        self.get_task(task)
        rel = f"{_task_rel(task)}/history"
        names = sorted(name for name in self.storage.listdir(rel) if name.endswith(".json"))
        return [self._parse(Change, self.storage.read_bytes(f"{rel}/{name}"), f"{rel}/{name}") for name in names]

    # ------------------------------------------------------------- reporting
    def show(self, task: str) -> TaskView:
        record = self.get_task(task)
        aliases = self.aliases(task)
        archived = self.archived_versions(task)
        return TaskView(
            spec=record.spec,
            base_fingerprint=record.base_fingerprint,
            versions=[
                VersionView(
                    manifest=manifest,
                    aliases=sorted(name for name, target in aliases.items() if target == manifest.version),
                    archived=manifest.version in archived,
                    uri=self.version_uri(task, manifest.version),
                )
                for manifest in self.versions(task)
            ],
            aliases=aliases,
            rollout=self.rollout(task),
        )

    def verify(self, task: str | None = None) -> list[VerifyResult]:
        """Re-read every version (or one task's): parse, re-hash, compare with its manifest,
        and check that aliases and rollouts point at existing versions."""
        if task is not None:
            self.get_task(task)  # an unknown task is an error, not "0 of 0 verified"
        results: list[VerifyResult] = []
        for name in [task] if task else self.list_tasks():
            numbers = self.version_numbers(name)
            for number in numbers:
                results.append(VerifyResult(name, number, self._verify_version(name, number)))
            try:
                targets = [(f"alias {alias!r}", v) for alias, v in self.aliases(name).items()]
                rollout = self.rollout(name)
            except CorruptFileError as exc:
                results.append(VerifyResult(name, None, str(exc)))
                continue
            targets += [(f"rollout variant {r.name!r}", r.version) for r in (rollout.variants if rollout else [])]
            for what, version in targets:
                if version not in numbers:
                    results.append(VerifyResult(name, None, f"{what} points at missing version {version}"))
        return results

    def collect_garbage(self, older_than_s: float = 3600.0) -> int:
        """Remove what writers killed mid-write left in staging (never visible to readers);
        only leftovers older than `older_than_s`, so writers still at work are untouched."""
        return self.storage.remove_stale_staging(older_than_s)

    # ------------------------------------------------------- import / export
    def import_peft(
        self,
        source: str,
        task: str,
        base_fingerprint: BaseModelFingerprint,
        base_model: str,
        note: str = "",
        spec: TaskSpec | None = None,
    ) -> PromptVersion:
        """Register the soft prompt of a PEFT prompt-tuning or p-tuning checkpoint directory
        (local path or fsspec URL), creating the task if needed: as `spec` says, by default a
        generation task with template `{input}`."""
        fs, root = fsspec.core.url_to_fs(source)
        root = root.rstrip("/")
        config = _artifact().parse_peft_config(_read_source(fs, f"{root}/{CONFIG_FILE}", source), source)
        tensor_path = f"{root}/{TENSOR_FILE}"
        if not fs.exists(tensor_path):
            if fs.exists(f"{root}/adapter_model.bin"):
                raise InvalidArtifactError(
                    f"{source}: only a pickled adapter_model.bin was found; promptmux loads safetensors only "
                    "(save the adapter with safe_serialization=True)"
                )
            raise InvalidArtifactError(f"{source}: no {TENSOR_FILE}")
        tensor = _artifact().decode_tensor(_read_source(fs, tensor_path, source), source)
        declared = config.get("num_virtual_tokens")
        if declared is not None and declared != tensor.shape[0]:
            raise InvalidArtifactError(
                f"{source}: adapter_config says {declared} virtual tokens but the tensor has {tensor.shape[0]}"
            )
        if self.has_task(task):
            _artifact().check_fits(tensor, base_fingerprint, self.get_task(task).base_fingerprint)
        else:
            _artifact().check_fits(tensor, base_fingerprint, base_fingerprint)
            self.create_task(spec or TaskSpec(name=task, base_model=base_model), base_fingerprint, exist_ok=True)
        init = str(config.get("prompt_tuning_init") or "").lower().replace("_", "-")
        return self.register(
            task,
            tensor,
            base_fingerprint,
            init_method=_artifact().PEFT_PROMPT_TYPES[config["peft_type"]] + (f" ({init})" if init else ""),
            init_text=config.get("prompt_tuning_init_text"),
            training={"imported_from": source, "peft_type": config["peft_type"]},
            note=note,
        )

    def export(self, task: str, version: int, destination: str) -> str:
        """Write a version as a PEFT adapter directory at `destination` (path or fsspec URL)."""
        manifest, tensor = self.load_prompt(task, version)
        fs, root = fsspec.core.url_to_fs(destination)
        root = root.rstrip("/")
        if self._holds(fs, root):
            raise ConflictError(f"{destination} is inside the registry {self.uri}; export to a folder outside it")
        if fs.exists(f"{root}/{CONFIG_FILE}") or fs.exists(f"{root}/{TENSOR_FILE}"):
            raise ConflictError(f"{destination} already holds an adapter; choose an empty directory")
        fs.makedirs(root, exist_ok=True)
        for name, data in _artifact().version_files(manifest, tensor).items():
            fs.pipe_file(f"{root}/{name}", data)
        return destination

    # --------------------------------------------------------------- helpers
    def _holds(self, fs: fsspec.AbstractFileSystem, path: str) -> bool:
        """Whether `path` on `fs` is this registry's folder or inside it."""
        if type(fs) is not type(self.storage.fs):
            return False
        if isinstance(self.storage, LocalStorage):
            return Path(path).resolve().is_relative_to(Path(self.storage.uri))
        root = self.storage.root.rstrip("/")
        return path == root or path.startswith(f"{root}/")

    def _claimed_numbers(self, task: str) -> list[int]:
        """Every version directory, including one a writer is still (or died) filling."""
        return sorted(int(name) for name in self.storage.listdir(f"{_task_rel(task)}/versions") if name.isdigit())

    def version_numbers(self, task: str, known: Collection[int] = ()) -> list[int]:
        """The visible versions: complete directories (a manifest is written last). Versions in
        `known` were seen complete before and are not checked again (versions are immutable)."""
        numbers = self._claimed_numbers(task)
        if self.storage.atomic_publish:
            return numbers
        return [n for n in numbers if n in known or self.storage.exists(f"{_version_rel(task, n)}/{MANIFEST_FILE}")]

    def _check_servable(self, task: str, version: int) -> None:
        self.get_version(task, version)
        if version in self.archived_versions(task):
            raise ConflictError(f"version {version} of {task!r} is archived")

    def _task_lock(self, task: str) -> AbstractContextManager[None]:
        self.get_task(task)
        return self.storage.lock(f"{_task_rel(task)}/meta")

    def _parse(self, schema: type[SchemaT], data: bytes, rel: str) -> SchemaT:
        try:
            return schema.model_validate_json(data)
        except ValidationError as exc:
            problems = describe(exc.errors(), "file", limit=3)
            raise CorruptFileError(f"{self.uri.rstrip('/')}/{rel} is corrupt ({problems})") from exc

    def _read_or_none(self, rel: str) -> bytes | None:
        try:
            return self.storage.read_bytes(rel)
        except NotFoundError:
            return None

    def _verify_version(self, task: str, version: int) -> str | None:
        try:
            manifest, _ = self.load_prompt(task, version)
            _artifact().parse_peft_config(self.storage.read_bytes(f"{_version_rel(task, version)}/{CONFIG_FILE}"), "")
        except (PromptmuxError, ValueError) as exc:
            return str(exc)
        if manifest.version != version or manifest.task != task:
            return f"manifest names {manifest.task}@{manifest.version}"
        return None


def _mismatch(manifest: PromptVersion, tensor: "torch.Tensor") -> str | None:
    if _artifact().tensor_sha256(tensor) != manifest.sha256:
        return "sha256 of the tensor does not match the manifest (the file was altered or corrupted)"
    if tuple(tensor.shape) != (manifest.num_virtual_tokens, manifest.token_dim) or _artifact().dtype_name(tensor) != manifest.dtype:
        return (
            f"tensor is {tuple(tensor.shape)} {_artifact().dtype_name(tensor)}, manifest says "
            f"({manifest.num_virtual_tokens}, {manifest.token_dim}) {manifest.dtype}"
        )
    return None


def _read_source(fs: fsspec.AbstractFileSystem, path: str, source: str) -> bytes:
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFoundError(f"{source}: {path.rsplit('/', 1)[-1]} not found") from exc


def _task_rel(task: str) -> str:
    return f"tasks/{validate_name(task, 'task name')}"


def _version_rel(task: str, version: int) -> str:
    if not isinstance(version, int) or version < 1:
        raise NotFoundError(f"invalid version {version!r}: versions are positive integers")
    return f"{_task_rel(task)}/versions/{version}"


def _alias_rel(task: str, alias: str) -> str:
    return f"{_task_rel(task)}/aliases/{alias}.json"
