"""Prompt versions: immutable PEFT adapter folders under `tasks/<task>/versions/<n>/`, each with
its manifest (`promptmux.json`, written last), and the archive markers that retire one.

Versions are claimed lock-free: `Storage.publish_dir` refuses an existing directory, so
concurrent writers retry with the next number; on object stores the claim is a conditional
write, so this holds across machines. A version is checked before it is stored (its
tensors, its config against them, its fit to the task's base model) and when it is loaded
(sha256 and shape against the manifest).
"""

import os
from collections.abc import Collection
from types import ModuleType
from typing import TYPE_CHECKING, Any

from promptmux.core.errors import ConflictError, IncompatiblePromptError, InvalidArtifactError, NotFoundError, PromptmuxError
from promptmux.methods.catalog import method, parse_config
from promptmux.methods.files import CONFIG_FILE, TENSOR_FILE
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry.history import HistoryEntry
from promptmux.registry.layout import MANIFEST_FILE
from promptmux.registry.names import parse_version
from promptmux.registry.records import RecordFiles, task_rel, version_rel
from promptmux.registry.schemas import PromptVersion
from promptmux.registry.task_store import TaskStore

if TYPE_CHECKING:
    from promptmux.methods.prompt import Prompt, PromptLike

MAX_CLAIM_ATTEMPTS = 10_000


def artifact() -> ModuleType:
    """Adapter files' code (torch, safetensors, peft), loaded when a tensor is first touched:
    metadata commands such as `registry list` never pay for it."""
    from promptmux.methods import safetensors_files

    return safetensors_files


def prompts() -> ModuleType:
    """The `Prompt` type and its shared checks (torch), loaded as lazily as `artifact`."""
    from promptmux.methods import prompt

    return prompt


def checked_prompt(prompt: "PromptLike", made_on: BaseModelFingerprint, expected: BaseModelFingerprint,
                   source: str) -> "Prompt":
    """`prompt` as a checked `Prompt` (a bare tensor is a soft prompt), fitting the task's base model."""
    peft = prompts()
    if not isinstance(prompt, peft.Prompt):
        prompt = peft.Prompt("prompt_tuning", {peft.EMBEDDINGS: prompt})
    kind = method(prompt.method)
    prompt.tensors = kind.tensors(prompt.tensors, source)
    kind.check(prompt, source)
    problem = expected.misfit(made_on, kind.width(prompt))
    if problem:
        raise IncompatiblePromptError(f"prompt does not fit the task's base model: {problem}")
    kind.check_fits(prompt, made_on, source)
    return prompt


class VersionStore:
    def __init__(self, files: RecordFiles, tasks: TaskStore) -> None:
        self.files, self.tasks = files, tasks

    def register(
        self,
        task: str,
        prompt: "PromptLike",
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
        """Store a prompt (a soft prompt's tensor, or any method's `Prompt`) as the task's next
        version and return its manifest. It is checked first: its tensors, its config against
        them, and its fit to the task's base model (`base_fingerprint` is the model it was
        made on, checked against the task's)."""
        record = self.tasks.get(task)
        prompt = checked_prompt(prompt, base_fingerprint, record.base_fingerprint, f"{task} (new version)")
        if parent_version is not None:
            self.get(task, parent_version)
        template = PromptVersion(
            task=task,
            version=1,
            method=prompt.method,
            task_id=prompt.task_id,
            num_virtual_tokens=prompt.embeddings.shape[0],
            token_dim=prompt.embeddings.shape[1],
            dtype=artifact().dtype_name(prompt.embeddings),
            base_model=record.spec.base_model,
            base_fingerprint=record.base_fingerprint,
            init_method=init_method,
            init_text=init_text,
            training=training or {},
            metrics=metrics or {},
            data_fingerprint=data_fingerprint,
            parent_version=parent_version,
            note=note,
            sha256=artifact().tensors_sha256(prompt.tensors),
        )

        for _ in range(MAX_CLAIM_ATTEMPTS):  # each number tried is its own announced edit, with its history entry
            manifest = template.model_copy(update={"version": max(self._claimed_numbers(task), default=0) + 1})
            details = {"version": manifest.version, "method": prompt.method, "init": init_method,
                       **({"imported_from": training["imported_from"]} if training and "imported_from" in training else {})}
            claimed = self.files.announced(
                task, "version",
                lambda m=manifest: self.files.storage.publish_dir(version_rel(task, m.version), self._files(m, prompt)) and m,
                [HistoryEntry(action="register", details=details)])
            if claimed:
                return claimed
        raise ConflictError(f"could not claim a version number for task {task!r}")

    @staticmethod
    def _files(manifest: PromptVersion, prompt: "Prompt") -> dict[str, bytes]:
        """A version's folder: the PEFT adapter, and our manifest last (it makes the version visible on object stores)."""
        adapter = artifact().adapter_files(prompt, manifest.base_model, manifest.base_fingerprint)
        return {**adapter, MANIFEST_FILE: manifest.model_dump_json(indent=2).encode()}

    def all(self, task: str, include_archived: bool = True) -> list[PromptVersion]:
        self.tasks.get(task)
        archived = self.archived(task)
        return [self.get(task, number) for number in self.numbers(task) if include_archived or number not in archived]

    def get(self, task: str, version: int) -> PromptVersion:
        manifest = self.files.read(PromptVersion, f"{version_rel(task, version)}/{MANIFEST_FILE}")
        if manifest is None:
            self.tasks.get(task)
            raise NotFoundError(f"task {task!r} has no version {version}")
        return manifest

    def latest(self, task: str) -> PromptVersion:
        archived = self.archived(task)
        live = [number for number in self.numbers(task) if number not in archived]
        if not live:
            self.tasks.get(task)
            raise NotFoundError(f"task {task!r} has no active versions: every one is archived (bring one back with "
                                f"promptmux registry unarchive {task} VERSION)")
        return self.get(task, max(live))

    def uri(self, task: str, version: int) -> str:
        return self.files.storage.url(version_rel(task, version))

    def load_prompt(self, task: str, version: int) -> tuple[PromptVersion, "Prompt"]:
        """Manifest and prompt of a version, its tensors checked against the manifest's sha256 and shape."""
        manifest = self.get(task, version)
        storage, source, rel = self.files.storage, f"{task}@{version}", f"{version_rel(task, version)}/{TENSOR_FILE}"
        local = storage.local_path(rel)
        if local is not None and os.path.isfile(local):
            tensors = artifact().read_tensor_file(local, source)
        else:
            tensors = artifact().decode_tensors(storage.read_bytes(rel), source)
        prompt = prompts().Prompt(manifest.method, method(manifest.method).tensors(tensors, source), task_id=manifest.task_id)
        problem = _mismatch(manifest, prompt)
        if problem:
            raise InvalidArtifactError(f"{source}: {problem}")
        if method(manifest.method).layout_in_config:
            prompt.peft_config = parse_config(storage.read_bytes(f"{version_rel(task, version)}/{CONFIG_FILE}"),
                                                        source)
        return manifest, prompt

    def problem(self, task: str, version: int) -> str | None:
        """What is wrong with a stored version, re-read and re-hashed, or None."""
        try:
            manifest, _ = self.load_prompt(task, version)
            parse_config(self.files.storage.read_bytes(f"{version_rel(task, version)}/{CONFIG_FILE}"), "")
        except (PromptmuxError, ValueError) as exc:
            return str(exc)
        if manifest.version != version or manifest.task != task:
            return f"manifest names {manifest.task}@{manifest.version}"
        return None

    def archived(self, task: str) -> set[int]:
        return {number for name in self.files.storage.listdir(f"{task_rel(task)}/archived")
                if (number := parse_version(name)) is not None}

    def check_servable(self, task: str, version: int) -> None:
        """Refuse to route traffic to a version that does not exist or is archived."""
        self.get(task, version)
        if version in self.archived(task):
            raise ConflictError(f"version {version} of {task!r} is archived")

    def numbers(self, task: str, known: Collection[int] = ()) -> list[int]:
        """The visible versions: complete directories (a manifest is written last). Versions in
        `known` were seen complete before and are not checked again (versions are immutable)."""
        numbers = self._claimed_numbers(task)
        storage = self.files.storage
        if storage.atomic_publish:
            return numbers
        return [n for n in numbers if n in known or storage.exists(f"{version_rel(task, n)}/{MANIFEST_FILE}")]

    def _claimed_numbers(self, task: str) -> list[int]:
        """Every version directory, including one a writer is still (or died) filling."""
        return sorted(number for name in self.files.storage.listdir(f"{task_rel(task)}/versions")
                      if (number := parse_version(name)) is not None)


def _mismatch(manifest: PromptVersion, prompt: "Prompt") -> str | None:
    tensor, tensors = prompt.embeddings, artifact()
    if tensors.tensors_sha256(prompt.tensors) != manifest.sha256:
        return "sha256 of the tensor does not match the manifest (the file was altered or corrupted)"
    if tuple(tensor.shape) != (manifest.num_virtual_tokens, manifest.token_dim) or tensors.dtype_name(tensor) != manifest.dtype:
        return (
            f"tensor is {tuple(tensor.shape)} {tensors.dtype_name(tensor)}, manifest says "
            f"({manifest.num_virtual_tokens}, {manifest.token_dim}) {manifest.dtype}"
        )
    return None
