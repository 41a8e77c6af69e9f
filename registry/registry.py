"""The registry: tasks, their immutable prompt versions, aliases, rollouts and outcomes.

Layout under the root (any fsspec URL)::

    tasks/<task>/task.json                   TaskRecord (spec + base-model fingerprint)
    tasks/<task>/versions/<n>/               a PEFT adapter directory + promptmux.json
    tasks/<task>/aliases/<alias>.json        AliasRecord
    tasks/<task>/rollout.json                RolloutSpec
    tasks/<task>/archived/<n>                marker: version n is archived
    changes/<n>.json                         the change feed (`change_feed.py`): one entry per routing edit, for servers
    traffic/<hour>/<minute>-<replica>.json   what each replica served, per task and tenant (`traffic_store.py`)

`Registry` composes one store per kind of record (`registry.tasks`, `.versions`,
`.aliases`, `.rollouts`, `.outcomes`, `.transfer` for PEFT import and export, `.tenants`, `.traffic`), all over one
`RecordFiles`, each depending only on the ones before it; it keeps what spans them: the
edits that check what routes traffic (archive, delete), the task's view and history,
verification and repair.

Versions are claimed lock-free (`version_store.py`); alias, rollout and archive edits take
the task's lock because each checks the others (an alias may not point at an archived
version, a version may not be archived while something points at it). That lock is a
`flock` on local disks and in-process only on object stores: run alias and rollout edits of
one task from one place at a time there (registrations may come from anywhere).
Every edit that changes routing ends with an entry in the change feed, and is journaled
(`edits.py`): it completes, or leaves nothing visible, even if its writer is killed or the
disk fills half-way.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from promptmux.core.clock import utc_now
from promptmux.core.errors import ConflictError, CorruptFileError
from promptmux.registry.alias_store import AliasStore
from promptmux.registry.edits import Edit
from promptmux.registry.history import MANUAL, HistoryEntry
from promptmux.registry.outcome_store import OutcomeStore
from promptmux.registry.records import HISTORY_DIR, RecordFiles
from promptmux.registry.rollout_store import RolloutStore
from promptmux.registry.schemas import TaskView, VersionView
from promptmux.registry.storage import Storage, open_storage
from promptmux.registry.task_store import TaskStore
from promptmux.registry.tenant_store import TenantStore
from promptmux.registry.traffic_store import TrafficStore
from promptmux.registry.transfer import PeftTransfer
from promptmux.registry.version_store import VersionStore

REGISTRY_ENV = "PROMPTMUX_REGISTRY"


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
    repaired: bool = False  # the problem was a half-done edit or decision, and `repair` finished it

    @property
    def ok(self) -> bool:
        return self.problem is None or self.repaired


class Registry:
    """Versioned soft prompts per task, on local disk or any fsspec URL: one store per kind of record."""

    def __init__(self, uri: str | None = None, create: bool = True, storage: Storage | None = None) -> None:
        self.files = RecordFiles(storage or open_storage(uri or default_registry_uri(), create))
        self.storage, self.feed, self.journal = self.files.storage, self.files.feed, self.files.journal
        self.tasks = TaskStore(self.files)
        self.versions = VersionStore(self.files, self.tasks)
        self.aliases = AliasStore(self.files, self.tasks, self.versions)
        self.rollouts = RolloutStore(self.files, self.tasks, self.versions, self.aliases)
        self.outcomes = OutcomeStore(self.files)
        self.transfer = PeftTransfer(self.files, self.tasks, self.versions)
        self.tenants = TenantStore(self.files)
        self.traffic = TrafficStore(self.files)

    @property
    def uri(self) -> str:
        return self.files.uri

    # ------------------------------------------- edits that check what routes traffic
    def archive(self, task: str, version: int) -> None:
        """Retire a version: it stays loadable by number but is no longer `latest`. Refused
        while an alias or the rollout routes traffic to it."""
        with self.tasks.editing(task):
            self.versions.get(task, version)
            users = [f"alias {name!r}" for name, target in self.aliases.of(task).items() if target == version]
            rollout = self.rollouts.get(task)
            if rollout and any(variant.version == version for variant in rollout.variants):
                users.append("the rollout")
            if users:
                raise ConflictError(f"version {version} of {task!r} is in use by {', '.join(users)}; move them first")
            self.journal.run(Edit(task=task, what="archive", writes={f"archived/{version}": utc_now().isoformat()},
                                  history=[HistoryEntry(action="archive", details={"version": version})]))

    def unarchive(self, task: str, version: int) -> None:
        """Bring an archived version back: it counts for `latest` again."""
        with self.tasks.editing(task):
            self.versions.get(task, version)
            if version not in self.versions.archived(task):
                raise ConflictError(f"version {version} of {task!r} is not archived")
            self.journal.run(Edit(task=task, what="archive", removes=[f"archived/{version}"],
                                  history=[HistoryEntry(action="unarchive", details={"version": version})]))

    def delete_task(self, task: str, force: bool = False, actor: str = MANUAL) -> None:
        """Remove a task with every version, alias, rollout and record but its history, which
        records the delete; refused while an alias or a rollout routes traffic to it unless
        `force`. Its `task.json` goes first, in one journaled edit that servers see, so a task
        half-deleted by a crash is already gone to every reader, and deleting it again removes
        what is left."""
        if self.tasks.exists(task):
            with self.tasks.editing(task):
                users = [f"alias {name}→{version}" for name, version in sorted(self.aliases.of(task).items())]
                users += ["its rollout"] if self.rollouts.get(task) else []
                if users and not force:
                    raise ConflictError(f"task {task!r} is served through {', '.join(users)}; move them, or delete "
                                        "anyway with --force")
                deleted = HistoryEntry(actor=actor, action="delete", reason="forced" if users else "",
                                       details={"versions": len(self.versions.numbers(task)), "served_by": users})
                self.journal.run(Edit(task=task, what="task", removes=["task.json"], history=[deleted]))
        elif not self.files.leftovers(task):
            self.tasks.get(task)  # unknown: says so, with a guess
        self.files.remove_task(task)

    # ------------------------------------------------------------ reading
    def show(self, task: str) -> TaskView:
        """The task with its versions, aliases and rollout, as `registry show` lists them."""
        record = self.tasks.get(task)
        aliases = self.aliases.of(task)
        archived = self.versions.archived(task)
        return TaskView(
            spec=record.spec,
            base_fingerprint=record.base_fingerprint,
            versions=[
                VersionView(
                    manifest=manifest,
                    aliases=sorted(name for name, target in aliases.items() if target == manifest.version),
                    archived=manifest.version in archived,
                    uri=self.versions.uri(task, manifest.version),
                )
                for manifest in self.versions.all(task)
            ],
            aliases=aliases,
            rollout=self.rollouts.get(task),
        )

    def history(self, task: str) -> list[HistoryEntry]:
        """Every recorded change of a task, oldest first; a deleted task's too."""
        entries = self.files.records(task, HISTORY_DIR, HistoryEntry)
        if not entries:
            self.tasks.get(task)  # an unknown task says so
        return entries

    # ------------------------------------------------------ verify and repair
    def verify(self, task: str | None = None, repair: bool = False) -> list[VerifyResult]:
        """Re-read every version (or one task's): parse, re-hash, compare with its manifest,
        and check that aliases and rollouts point at existing versions. Also report edits a
        writer left half-done and rollout decisions recorded but not applied; with `repair`,
        finish them (each problem is then reported as repaired)."""
        if task is not None:
            self.tasks.get(task)  # an unknown task is an error, not "0 of 0 verified"
        results = self._unfinished(task, repair)
        for name in [task] if task else self.tasks.names():
            numbers = self.versions.numbers(name)
            for number in numbers:
                results.append(VerifyResult(name, number, self.versions.problem(name, number)))
            try:
                targets = [(f"alias {alias!r}", v) for alias, v in self.aliases.of(name).items()]
                rollout = self.rollouts.get(name)
            except CorruptFileError as exc:
                results.append(VerifyResult(name, None, str(exc)))
                continue
            targets += [(f"rollout variant {r.name!r}", r.version) for r in (rollout.variants if rollout else [])]
            for what, version in targets:
                if version not in numbers:
                    results.append(VerifyResult(name, None, f"{what} points at missing version {version}"))
        return results

    def _unfinished(self, task: str | None, repair: bool) -> list[VerifyResult]:
        """Half-done edits, unreadable edit records and decided-but-unapplied rollout decisions
        (a decision whose edit is half-done is that edit, reported once)."""
        pending = self.journal.pending(task)
        results = [VerifyResult(edit.task, None, f"half-done edit ({edit.summary()})", repaired=repair) for edit in pending]
        if repair:
            self.finish_pending(task)
        results += [VerifyResult(task or "-", None, f"{self.uri}/{rel}: unreadable edit record")
                    for rel in self.journal.unreadable()]
        busy = set() if repair else {edit.task for edit in pending}
        for name in [task] if task else self.tasks.names():
            try:
                policy = self.rollouts.policy(name)
                decision = self.rollouts.decision(name, policy) if policy and name not in busy else None
            except CorruptFileError as exc:
                results.append(VerifyResult(name, None, str(exc)))
                continue
            if decision is not None:
                results.append(VerifyResult(name, None, f"rollout decision {decision.file_name()} "
                                            f"({decision.change.summary()}) recorded but not applied", repaired=repair))
                if repair:
                    self.rollouts.apply_decision(name, decision)
        return results

    def finish_pending(self, task: str | None = None) -> list[Edit]:
        """Finish every edit a writer left half-done (of one task, or all, the tenants' too),
        each under its task's lock."""
        finished = []
        for name in sorted({edit.task for edit in self.journal.pending(task)}):
            with self.files.task_lock(name):
                finished += self.journal.finish(name)
        return finished

    def collect_garbage(self, older_than_s: float = 3600.0) -> int:
        """Remove what killed writers left behind, anywhere in the registry: staging directories
        and temporary files (never visible to readers); only leftovers older than
        `older_than_s`, so writers still at work are untouched."""
        return self.storage.remove_stale_leftovers(older_than_s)
