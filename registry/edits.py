"""Registry edits that touch several files, made crash-safe by a journal: each completes or
leaves nothing visible.

A routing edit (an alias moved, a rollout set, a version archived, an automatic rollout's
step or decision, a task or version announced) writes several files: the data, a
change-feed entry, history. A writer killed, or a disk that fills, between two of them would
leave a half-applied edit: an alias moved with no change-feed entry (servers miss it until
their next full scan) and no history, a rollout split with no policy behind it. So an edit
is first written whole, as one create-only record `edits/<task>.<id>.json` (`Edit`), then
applied step by step, then its record is removed. Every step is idempotent: files are
written with their final content, removals skip what is gone, history entries are created
under names derived from the edit's id (create-only, so never twice), and a repeated
change-feed entry only makes readers reload the task once more.

Tenant records are edited the same way, under the subject `TENANTS` instead of a task (their
folder `tenants/`, their own lock), so a tenant added or revoked is announced to the
replicas even when its writer dies between the record and the announcement.

A record left behind is finished by whoever comes next: the next edit of the same task
(under the task's lock, before its own), the rollout controller every round, and
`promptmux registry verify --repair`. Because every edit of a task first finishes the
records it finds, a record is always that task's latest edit, and finishing it is always
correct. An edit whose record cannot even be written (a full disk) changes nothing; one
that fails before its first data file is written removes its record again, so it too
changes nothing; one that fails later is finished on the next attempt. Either way the
error says which (`StorageError`).
"""

import uuid
from datetime import datetime

from pydantic import Field

from promptmux.core.clock import utc_now
from promptmux.core.errors import NotFoundError, StorageError
from promptmux.core.strict_model import StrictModel
from promptmux.registry.change_feed import ChangeFeed, FeedKind
from promptmux.registry.history import HistoryEntry
from promptmux.registry.names import validate_name
from promptmux.registry.storage import Storage

EDITS_DIR = "edits"
TENANTS = ":tenants"  # the subject of tenant edits (and their change-feed entries): no task is named so
TENANTS_DIR = "tenants"


def subject_root(subject: str) -> str:
    """The folder a subject's edits write under: a task's own, or the tenants' folder."""
    return TENANTS_DIR if subject == TENANTS else f"tasks/{validate_name(subject, 'task name')}"


def subject_words(subject: str) -> str:
    """A subject as an error message names it."""
    return "the tenants" if subject == TENANTS else subject


class Edit(StrictModel):
    """One routing edit of one task (or of the tenants), whole: what it writes and removes
    (paths under the subject's folder), the change-feed entry that announces it, and its
    history entries."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[a-z0-9][a-z0-9_-]{0,127}$")
    task: str = Field(description="the task edited, or TENANTS")
    what: FeedKind
    writes: dict[str, str] = Field(default_factory=dict, description="file (under the task) -> its new content")
    removes: list[str] = Field(default_factory=list, description="files (under the task) removed if present")
    history: list[HistoryEntry] = Field(default_factory=list)
    at: datetime = Field(default_factory=utc_now)

    def summary(self) -> str:
        parts = [f"write {', '.join(self.writes)}" if self.writes else "", f"remove {', '.join(self.removes)}"
                 if self.removes else "", "; ".join(change.summary() for change in self.history)]
        return f"{self.what} edit {self.id} of {subject_words(self.task)}: " + ("; ".join(p for p in parts if p) or "announce")


class EditJournal:
    """Write, apply and finish the edit records of one registry's storage."""

    def __init__(self, storage: Storage, feed: ChangeFeed) -> None:
        self.storage = storage
        self.feed = feed

    def run(self, edit: Edit) -> None:
        """Record `edit`, then apply it (see the module docstring for what a failure leaves)."""
        self.begin(edit)
        self.apply(edit, fresh=True)

    def begin(self, edit: Edit) -> None:
        """Write the edit's record; a failure here changes nothing."""
        try:
            created = self.storage.create(_record_rel(edit), edit.model_dump_json().encode())
        except OSError as exc:
            raise StorageError(_failed(self.storage, exc, f"the {edit.what} edit of {subject_words(edit.task)} was not "
                                       "made; nothing changed")) from exc
        if not created:
            raise StorageError(f"an edit {edit.id} of {subject_words(edit.task)} is already recorded")

    def apply(self, edit: Edit, fresh: bool = False) -> None:
        """Apply a recorded edit and remove its record. `fresh`: the edit was recorded just now
        by this writer, so if its first data file cannot be written it is withdrawn whole."""
        root, subject = subject_root(edit.task), subject_words(edit.task)
        written = 0
        try:
            for rel, text in edit.writes.items():
                self.storage.write_bytes(f"{root}/{rel}", text.encode())
                written += 1
            for rel in edit.removes:
                _remove_if_present(self.storage, f"{root}/{rel}")
                written += 1
            self.feed.append(edit.task, edit.what)
            for index, change in enumerate(edit.history):
                self.storage.create(f"{root}/history/{change.file_name(f'{edit.id}.{index}')}",
                                    change.model_dump_json().encode())
        except OSError as exc:
            if fresh and not written and self.withdraw(edit):
                raise StorageError(_failed(self.storage, exc, f"the {edit.what} edit of {subject} was not made; "
                                           "nothing changed")) from exc
            raise StorageError(_failed(self.storage, exc, f"the {edit.what} edit of {subject} is recorded and will "
                                       "be finished by the next edit of the same records or `promptmux registry "
                                       "verify --repair`; nothing was lost")) from exc
        _remove_if_present(self.storage, _record_rel(edit))

    def withdraw(self, edit: Edit) -> bool:
        """Remove the record of an edit that never reached its data (removing needs no space);
        False if even that failed, and the edit stays recorded."""
        try:
            _remove_if_present(self.storage, _record_rel(edit))
        except OSError:
            return False
        return True

    def pending(self, task: str | None = None) -> list[Edit]:
        """Recorded edits not yet finished (of one task, or all), oldest first; a record that
        cannot be parsed is left to `unreadable`."""
        return sorted((edit for _, edit in self._records(task) if edit is not None), key=lambda edit: edit.at)

    def unreadable(self) -> list[str]:
        """Edit records that cannot be parsed (registry-relative paths): `verify` names them."""
        return [rel for rel, edit in self._records(None) if edit is None]

    def _records(self, task: str | None) -> list[tuple[str, Edit | None]]:
        """(path, edit) of every record (of one task), one listing of one folder: usually empty."""
        records = []
        for file in self.storage.listdir(EDITS_DIR):
            name, _, suffix = file.rpartition(".")
            if suffix != "json" or file.startswith(".") or (task is not None and name.rpartition(".")[0] != task):
                continue
            rel = f"{EDITS_DIR}/{file}"
            try:
                records.append((rel, Edit.model_validate_json(self.storage.read_bytes(rel))))
            except ValueError:
                records.append((rel, None))
            except NotFoundError:  # finished meanwhile
                continue
        return records

    def finish(self, task: str) -> list[Edit]:
        """Finish every edit of `task` (or TENANTS) a writer left recorded (call under its lock)."""
        left = self.pending(task)
        for edit in left:
            self.apply(edit)
        return left


def _record_rel(edit: Edit) -> str:
    subject = edit.task if edit.task == TENANTS else validate_name(edit.task, "task name")
    return f"{EDITS_DIR}/{subject}.{edit.id}.json"


def _remove_if_present(storage: Storage, rel: str) -> None:
    try:
        storage.remove(rel)
    except NotFoundError:
        pass


def _failed(storage: Storage, exc: OSError, outcome: str) -> str:
    """One line: what the storage said, and what it means for the edit."""
    return f"cannot write to the registry at {storage.uri}: {exc.strerror or exc}; {outcome}"
