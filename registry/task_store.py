"""Tasks: each one's spec and base-model fingerprint (`tasks/<task>/task.json`), created once
and read by every other store; the task's lock, under which its records are edited."""

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

from promptmux.core.errors import ConflictError, NotFoundError, StorageError
from promptmux.core.limits import limits
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry.records import RecordFiles, task_rel
from promptmux.registry.schemas import TaskRecord, TaskSpec


class TaskStore:
    def __init__(self, files: RecordFiles) -> None:
        self.files = files

    def create(self, spec: TaskSpec, base_fingerprint: BaseModelFingerprint, exist_ok: bool = False) -> TaskRecord:
        """Create a task; with `exist_ok`, return the existing one if its base model matches. A spec
        past the size limits (`limits.py`) is refused."""
        limits().check_spec(spec)
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

    @contextmanager
    def holding_first_version(self, spec: TaskSpec, base_fingerprint: BaseModelFingerprint) -> Iterator[None]:
        """The task, created if it is new, for the version registered inside the block. A task
        this created that ends the block without a version (its registration failed: a full
        disk, a bad prompt) is removed again, which needs no space: a failed import or training
        leaves no empty task behind."""
        new = not self.exists(spec.name)
        try:
            if new:
                self.create(spec, base_fingerprint, exist_ok=True)
            yield
        except BaseException as exc:
            claimed_by_another = isinstance(exc, ConflictError)  # a concurrent creator's task is theirs
            if new and not claimed_by_another and not self.files.storage.listdir(f"{task_rel(spec.name)}/versions"):
                self.files.remove_task(spec.name)
                for edit in self.files.journal.pending(spec.name):  # its announcement, if that is what failed
                    self.files.journal.withdraw(edit)
                if isinstance(exc, StorageError) and isinstance(exc.__cause__, OSError):
                    raise StorageError(f"cannot write to the registry at {self.files.uri}: {exc.__cause__.strerror}; "
                                       "nothing was registered") from exc
            raise

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
