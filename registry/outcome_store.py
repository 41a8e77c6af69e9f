"""Outcomes as data: the feedback clients send for served requests (`outcomes/`, one
create-only file per request id), the windows of what each replica served (`serving/`,
immutable), and the key replicas sign feedback ids with (`keys/feedback.key`)."""

import secrets

from promptmux.core.errors import ConflictError
from promptmux.registry.policy import Outcome, ServedWindow
from promptmux.registry.records import RecordFiles, task_rel

FEEDBACK_KEY = "keys/feedback.key"


class OutcomeStore:
    def __init__(self, files: RecordFiles) -> None:
        self.files = files

    def feedback_key(self) -> bytes:
        """The key serving replicas sign feedback ids with, made on first use: every replica
        reading this registry, on any node, shares it."""
        data = self.files.read_or_none(FEEDBACK_KEY)
        if data is None:
            with self.files.storage.lock("keys/feedback"):
                data = self.files.read_or_none(FEEDBACK_KEY)
                if data is None:
                    data = secrets.token_hex(32).encode()
                    self.files.storage.write_bytes(FEEDBACK_KEY, data, private=True)  # it forges feedback ids
        return bytes.fromhex(data.decode())

    def record(self, outcome: Outcome) -> bool:
        """Store one piece of feedback durably, claimed with a create-only write: True for the
        one claim of a request id (whatever the number of replicas and concurrent posts), False
        when the same outcome was stored already, `ConflictError` when a different one was (the
        first stands)."""
        rel = f"{task_rel(outcome.task)}/outcomes/{outcome.file_name()}"
        try:
            if self.files.storage.create(rel, outcome.model_dump_json().encode()):
                return True
        except OSError as exc:
            raise self.files.write_failed(exc, "the feedback was not recorded, nothing changed: send it again") from exc
        stored = self.files.parse(Outcome, self.files.storage.read_bytes(rel), rel)
        if (stored.label, stored.score) != (outcome.label, outcome.score):
            given = f"label {stored.label!r}" if stored.label is not None else f"score {stored.score:g}"
            raise ConflictError(f"feedback for this output was recorded already, with {given}; the first stands")
        return False

    def names(self, task: str, kind: str = "outcomes") -> list[str]:
        """Names of a task's outcome files (`kind="serving"`: its served windows)."""
        return [name for name in self.files.storage.listdir(f"{task_rel(task)}/{kind}") if name.endswith(".json")]

    def read(self, task: str, name: str) -> Outcome:
        rel = f"{task_rel(task)}/outcomes/{name}"
        return self.files.parse(Outcome, self.files.storage.read_bytes(rel), rel)

    def record_served(self, task: str, window: ServedWindow) -> None:
        """Append one replica's window of what it served (an immutable file of its own)."""
        self.files.storage.write_bytes(f"{task_rel(task)}/serving/{window.file_name()}", window.model_dump_json().encode())

    def read_served(self, task: str, name: str) -> ServedWindow:
        rel = f"{task_rel(task)}/serving/{name}"
        return self.files.parse(ServedWindow, self.files.storage.read_bytes(rel), rel)
