"""The registry's change feed: how a server learns what changed without reading everything.

Not to be confused with a task's history (`history.py`): the history is the audit trail
people read (`registry history`), one entry per alias or rollout change with who made it
and why; the feed is machine-facing, one numbered entry per routing edit of any task, which
replicas follow to refresh. (Its folder keeps its first name, `changes/`.)

Every routing-relevant write (a task created, a version registered or archived, an alias or
a rollout set or removed) ends by appending one entry naming its task. The log is a run of
numbered files, `changes/<n>.json`, each written with `Storage.create`: of writers racing for
number n, on any machine, exactly one wins and the others take n+1. The entry is written
after the data it announces, so a reader who sees it will read the change.

A reader keeps the number of the next entry it expects. A look with nothing changed is one
read that finds nothing; after k changes it is k+1 reads, whatever the number of tasks.
`changes/HEAD` holds a recent next number, written after each append. It is advisory: it
may lag (a writer died before updating it, or two updates crossed), which only costs a few
probes, because numbers are taken without gaps and a probe runs forward to the first free one.

The log does not see a file edited at rest, behind the registry's back, nor a write whose
writer died between the data and the entry. Readers therefore also scan everything now and
then (`RegistryView.full_scan_interval_s`), and the full scan is what the log is tested against.
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from promptmux.core.clock import utc_now
from promptmux.core.errors import NotFoundError
from promptmux.registry.storage import Storage

LOG_DIR = "changes"
FeedKind = Literal["task", "version", "archive", "alias", "rollout", "tenant"]
HEAD = f"{LOG_DIR}/HEAD"


class FeedEntry(BaseModel):
    """One routing-relevant write: which task, what kind of edit, when."""

    task: str
    what: FeedKind = Field(description="what kind of edit")
    at: datetime = Field(default_factory=utc_now)


class ChangeFeed:
    """Append and read the numbered change entries of one registry's storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def append(self, task: str, what: FeedKind) -> int:
        """Add an entry; returns its number."""
        data = FeedEntry(task=task, what=what).model_dump_json().encode()
        number = self._head()
        while not self.storage.create(_entry_rel(number), data):
            number += 1
        self.storage.write_bytes(HEAD, str(number + 1).encode())
        return number

    def tail(self) -> int:
        """The number the next entry will get: where a reader that has just scanned everything starts."""
        number = self._head()
        while self.storage.exists(_entry_rel(number)):
            number += 1
        return number

    def since(self, cursor: int) -> tuple[set[str] | None, int]:
        """Tasks named by the entries from `cursor` on, and the cursor after them. None for the
        tasks when an entry cannot be read: the caller should scan everything."""
        tasks: set[str] | None = set()
        while True:
            try:
                data = self.storage.read_bytes(_entry_rel(cursor))
            except NotFoundError:
                return tasks, cursor
            try:
                entry = FeedEntry.model_validate_json(data)
            except ValidationError:
                tasks = None
            else:
                if tasks is not None:
                    tasks.add(entry.task)
            cursor += 1

    def _head(self) -> int:
        try:
            text = self.storage.read_bytes(HEAD).decode()
        except NotFoundError:
            return 0
        return int(text) if text.strip().isdigit() else 0


def _entry_rel(number: int) -> str:
    return f"{LOG_DIR}/{number:012d}.json"
