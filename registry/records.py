"""What every record store of a registry shares: its storage, journal and change feed, the
paths of a task's records, parsing a record, and the task's lock.

The stores (`task_store.py`, `version_store.py`, `alias_store.py`, `rollout_store.py`,
`outcome_store.py`, `transfer.py`) each keep one kind of record, as MLflow's
`abstract_store` splits its tracking store; `Registry` composes them over one `RecordFiles`.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from promptmux.core.errors import CorruptFileError, NotFoundError, StorageError, describe
from promptmux.registry.change_feed import ChangeFeed, FeedKind
from promptmux.registry.edits import Edit, EditJournal, subject_root, subject_words
from promptmux.registry.history import HistoryEntry
from promptmux.registry.names import validate_name
from promptmux.registry.storage import Storage

HISTORY_DIR = "history"
SchemaT = TypeVar("SchemaT", bound=BaseModel)
ClaimT = TypeVar("ClaimT")


def task_rel(task: str) -> str:
    return f"tasks/{validate_name(task, 'task name')}"


def version_rel(task: str, version: int) -> str:
    if not isinstance(version, int) or version < 1:
        raise NotFoundError(f"invalid version {version!r}: versions are positive integers")
    return f"{task_rel(task)}/versions/{version}"


class RecordFiles:
    """A registry's files as records: read and parsed, listed per task, edited under the task's
    lock through the journal, and announced on the change feed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.feed = ChangeFeed(storage)
        self.journal = EditJournal(storage, self.feed)

    @property
    def uri(self) -> str:
        return self.storage.uri

    def parse(self, schema: type[SchemaT], data: bytes, rel: str, outside: bool = False) -> SchemaT:
        """The record in `data`, read from `rel` in the registry (or, `outside`, from the path
        or URL `rel` itself: an import's files)."""
        try:
            return schema.model_validate_json(data)
        except ValidationError as exc:
            problems = describe(exc.errors(), "file", limit=3)
            where = rel if outside else f"{self.uri.rstrip('/')}/{rel}"
            raise CorruptFileError(f"{where} is corrupt ({problems})") from exc

    def remove_task(self, task: str) -> None:
        """Remove a task's records, all but its history: the audit trail outlives the task, so
        `registry history` still says who deleted it, and a task created again under the name
        continues it."""
        rel = task_rel(task)
        for name in self.storage.listdir(rel):
            if name != HISTORY_DIR:
                self.storage.remove_tree(f"{rel}/{name}")

    def leftovers(self, task: str) -> bool:
        """Whether a task's folder holds anything but its history (a delete that was cut short)."""
        return any(name != HISTORY_DIR for name in self.storage.listdir(task_rel(task)))

    def read_or_none(self, rel: str) -> bytes | None:
        try:
            return self.storage.read_bytes(rel)
        except NotFoundError:
            return None

    def read(self, schema: type[SchemaT], rel: str) -> SchemaT | None:
        """The record at `rel`, or None when there is none."""
        data = self.read_or_none(rel)
        return None if data is None else self.parse(schema, data, rel)

    def records(self, task: str, folder: str, schema: type[SchemaT], prefix: str = "") -> list[SchemaT]:
        """The JSON records in one of a task's folders (those whose names start with `prefix`), in name order."""
        rel = f"{task_rel(task)}/{folder}"
        names = [name for name in self.storage.listdir(rel) if name.startswith(prefix) and name.endswith(".json")]
        return [self.parse(schema, self.storage.read_bytes(f"{rel}/{name}"), f"{rel}/{name}") for name in names]

    @contextmanager
    def task_lock(self, task: str) -> Iterator[None]:
        """The lock a task's edits are made under (or, for `edits.TENANTS`, the tenants' edits)."""
        with self.storage.lock(f"{subject_root(task)}/meta"):
            yield

    @contextmanager
    def editing(self, task: str) -> Iterator[None]:
        """The task's lock, with any edit a writer left half-done finished first: so an edit
        left behind is always the task's latest, and finishing it is always right."""
        with self.task_lock(task):
            try:
                self.journal.finish(task)
            except StorageError as exc:  # this edit answers for itself: it was not made
                reason = exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc
                raise StorageError(f"cannot write to the registry at {self.uri}: {reason}; this edit of "
                                   f"{subject_words(task)} was not made, nothing changed: an earlier edit is still "
                                   "recorded and could not be finished (the next edit or `promptmux registry verify "
                                   "--repair` finishes it)") from exc
            yield

    def announced(self, task: str, what: FeedKind, claim: Callable[[], ClaimT],
                  history: list[HistoryEntry] | None = None) -> ClaimT:
        """Run `claim`, a create-only write that makes something new visible (a task, a version),
        between recording and applying its announcement (and its `history` entries): if it
        claims nothing (returns a falsy value) or fails, the record is withdrawn and nothing changed."""
        edit = Edit(task=task, what=what, history=history or [])
        self.journal.begin(edit)
        try:
            claimed = claim()
        except BaseException as exc:
            self.journal.withdraw(edit)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write to the registry at {self.uri}: {exc.strerror or exc}; nothing was "
                                   f"{'registered' if what == 'version' else 'created'}") from exc
            raise
        if not claimed:
            self.journal.withdraw(edit)
            return claimed
        self.journal.apply(edit)
        return claimed

    def write_failed(self, exc: OSError, what: str) -> StorageError:
        """A create-only record that could not be written, in words: what was not recorded."""
        return StorageError(f"cannot write to the registry at {self.uri}: {exc.strerror or exc}; {what}")
