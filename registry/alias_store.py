"""Aliases: names that route a task's traffic to a version (`tasks/<task>/aliases/<alias>.json`),
each recording where it pointed before, so servers can fall back while a new target fails
validation. Every move is a journaled edit with its history entry and change-feed entry."""

from promptmux.core.errors import NotFoundError
from promptmux.registry.edits import Edit
from promptmux.registry.history import MANUAL, HistoryEntry
from promptmux.registry.names import parse_version, validate_alias
from promptmux.registry.records import RecordFiles, task_rel
from promptmux.registry.schemas import AliasRecord, PromptVersion
from promptmux.registry.task_store import TaskStore
from promptmux.registry.version_store import VersionStore


class AliasStore:
    def __init__(self, files: RecordFiles, tasks: TaskStore, versions: VersionStore) -> None:
        self.files, self.tasks, self.versions = files, tasks, versions

    def of(self, task: str) -> dict[str, int]:
        """The task's aliases and the versions they point at."""
        return {alias: record.version for alias, record in self.records(task).items()}

    def resolve(self, task: str, ref: int | str | None = None) -> PromptVersion:
        """A version by number, alias name, or `latest`/None."""
        if ref is None or ref == "latest":
            return self.versions.latest(task)
        if isinstance(ref, int):
            return self.versions.get(task, ref)
        if parse_version(ref) is not None:
            return self.versions.get(task, int(ref))
        aliases = self.of(task)
        if ref not in aliases:
            raise NotFoundError(f"task {task!r} has no alias {ref!r}")
        return self.versions.get(task, aliases[ref])

    def records(self, task: str) -> dict[str, AliasRecord]:
        rel = f"{task_rel(task)}/aliases"
        result = {}
        for filename in self.files.storage.listdir(rel):
            if filename.endswith(".json") and not filename.startswith("."):
                record = self.files.read(AliasRecord, f"{rel}/{filename}")
                if record is not None:
                    result[filename.removesuffix(".json")] = record
        return result

    def set(self, task: str, alias: str, version: int, actor: str = MANUAL, reason: str = "") -> None:
        """Point `alias` at `version` (nothing happens if it points there already)."""
        validate_alias(alias)
        with self.tasks.editing(task):
            self.versions.check_servable(task, version)
            edit = self.move(task, alias, version, actor, reason)
            if edit is not None:
                self.files.journal.run(edit)

    def move(self, task: str, alias: str, version: int, actor: str, reason: str) -> Edit | None:
        """The edit that moves `alias` to `version`, recording where it pointed before (servers
        fall back to that version while this one fails validation); None if it is there already."""
        current = self.records(task).get(alias)
        if current is not None and current.version == version:
            return None
        was = current.version if current else None
        change = HistoryEntry(actor=actor, action="alias", reason=reason, details={"alias": alias, "version": version, "was": was})
        return Edit(task=task, what="alias", history=[change],
                    writes={f"aliases/{alias}.json": AliasRecord(version=version, previous=was).model_dump_json()})

    def delete(self, task: str, alias: str, actor: str = MANUAL, reason: str = "") -> None:
        validate_alias(alias)
        with self.tasks.editing(task):
            was = self.of(task).get(alias)
            if was is None:
                raise NotFoundError(f"task {task!r} has no alias {alias!r}")
            change = HistoryEntry(actor=actor, action="alias-delete", reason=reason, details={"alias": alias, "was": was})
            self.files.journal.run(Edit(task=task, what="alias", removes=[f"aliases/{alias}.json"], history=[change]))
