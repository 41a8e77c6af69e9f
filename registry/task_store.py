"""Tasks: each one's spec and base-model fingerprint (`tasks/<task>/task.json`), created
once, read by every other store, and deleted with everything under it."""

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from promptmux.registry.edits import Edit
from promptmux.registry.errors import ConflictError, NotFoundError
from promptmux.registry.records import task_rel
from promptmux.registry.schemas import BaseModelFingerprint, TaskRecord, TaskSpec, TaskView, VersionView

if TYPE_CHECKING:
    from promptmux.registry.registry import Registry


class TaskStore:
    def __init__(self, registry: "Registry") -> None:
        self.registry = registry
        self.files = registry.files

    def create(self, spec: TaskSpec, base_fingerprint: BaseModelFingerprint, exist_ok: bool = False) -> TaskRecord:
        """Create a task; with `exist_ok`, return the existing one if its base model matches."""
        record = TaskRecord(spec=spec, base_fingerprint=base_fingerprint)
        data = record.model_dump_json(indent=2).encode()
        if self.files.announced(spec.name, "task", lambda: self.files.storage.create(f"{task_rel(spec.name)}/task.json", data)):
            return record
        if not exist_ok:
            raise ConflictError(f"task {spec.name!r} already exists")
        existing = self.get(spec.name)
        problem = existing.base_fingerprint.misfit(base_fingerprint)
        if problem:
            raise ConflictError(f"task {spec.name!r} exists for another base model: {problem}")
        return existing

    def get(self, task: str) -> TaskRecord:
        record = self.files.read(TaskRecord, f"{task_rel(task)}/task.json")
        if record is None:
            guess = difflib.get_close_matches(task, self.names(), n=1, cutoff=0.7)
            raise NotFoundError(f"unknown task {task!r}" + (f"; did you mean {guess[0]}?" if guess else ""))
        return record

    def exists(self, task: str) -> bool:
        return self.files.storage.exists(f"{task_rel(task)}/task.json")

    def names(self) -> list[str]:
        return [name for name in self.files.storage.listdir("tasks") if self.exists(name)]

    def delete(self, task: str, force: bool = False) -> None:
        """Remove a task with every version, alias, rollout and record, refused while an alias
        or a rollout routes traffic to it unless `force`. Its `task.json` goes first, in one
        journaled edit that servers see, so a task half-deleted by a crash is already gone to
        every reader, and deleting it again removes what is left."""
        if self.exists(task):
            with self.editing(task):
                users = [f"alias {name}→{version}" for name, version in sorted(self.registry.aliases.of(task).items())]
                users += ["its rollout"] if self.registry.rollouts.get(task) else []
                if users and not force:
                    raise ConflictError(f"task {task!r} is served through {', '.join(users)}; move them, or delete "
                                        "anyway with --force")
                self.files.journal.run(Edit(task=task, what="task", removes=["task.json"]))
        elif not self.files.storage.exists(task_rel(task)):
            self.get(task)  # unknown: says so, with a guess
        self.files.storage.remove_tree(task_rel(task))

    def view(self, task: str) -> TaskView:
        """The task with its versions, aliases and rollout, as `registry show` lists them."""
        record = self.get(task)
        aliases = self.registry.aliases.of(task)
        versions = self.registry.versions
        archived = versions.archived(task)
        return TaskView(
            spec=record.spec,
            base_fingerprint=record.base_fingerprint,
            versions=[
                VersionView(
                    manifest=manifest,
                    aliases=sorted(name for name, target in aliases.items() if target == manifest.version),
                    archived=manifest.version in archived,
                    uri=versions.uri(task, manifest.version),
                )
                for manifest in versions.all(task)
            ],
            aliases=aliases,
            rollout=self.registry.rollouts.get(task),
        )

    @contextmanager
    def lock(self, task: str) -> Iterator[None]:
        """The lock of a task that exists."""
        self.get(task)
        with self.files.task_lock(task):
            yield

    @contextmanager
    def editing(self, task: str) -> Iterator[None]:
        """The lock of a task that exists, with its half-done edit finished first (`RecordFiles.editing`)."""
        self.get(task)
        with self.files.editing(task):
            yield
