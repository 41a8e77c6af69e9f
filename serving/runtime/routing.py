"""Which prompt version serves a request, from a cached view of the registry.

Precedence: an explicit version, then an alias, then the task's rollout, then its
`production` alias, then its latest version. A rollout with a routing key hashes
(task, key) to a point in [0, 1): the same key lands on the same variant on every
replica while the split is unchanged; without a key the pick is weighted random. A route
the split of an automatic rollout assigns carries the experiment's id (only such routes
count toward its decision); a pinned version, an alias or a fallback carries none.

The view follows the registry on `refresh()`: it reads the registry's change feed from where
it last stopped and reloads only the tasks named there, so a refresh with nothing changed is
one storage request whatever the number of tasks, and one after k changes costs O(k). A
full scan (every task) runs at the first refresh, every `full_scan_interval_s`, and when a
log entry cannot be read: it catches what the log cannot see (files edited at rest).
Tasks that could not be read, and tasks with a refused version due for a retry, are
reloaded at every refresh. The view also holds the endpoint's tenants, re-read when the
feed announces a tenant added or revoked, and at every full scan. Each routed version is validated
first (`validate`, e.g. loading it into the engine's prompt cache, which reads and checks
the file but never runs the model: the model stays with the engine's thread); one that
fails is logged and counted, and is tried again after `retry_rejected_s` (a file restored
at rest is served again). An alias whose version fails validation never silently reroutes:
* if the registry records the version it pointed at before its last move, and that one
  is servable, requests that would use the alias are served by it under the variant
  `<alias>-fallback` (every replica, old or new, reads the same record);
* otherwise (say a corrupt `production` at start-up) they get `RouteUnavailable` (HTTP
  503) naming the alias, the version and the problem;
either way the alias is reported broken (`on_broken`) until its version validates.
A rollout variant whose version fails validation is treated alike: requests that land on
it are served as the task would be without the rollout (its `production` alias, else its
latest version) under the variant `<variant>-fallback`, or get a 503 naming the variant
when that is not servable either; the other variants keep their share, and the variant is
reported broken (`on_broken_variant`) until its version validates.
"""

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from promptmux.core.errors import NotFoundError, PromptmuxError, RouteUnavailable
from promptmux.registry import PromptVersion, Registry, RolloutSpec, TaskRecord
from promptmux.registry.edits import TENANTS
from promptmux.registry.tenant_store import TenantRecord
from promptmux.serving.runtime.tenants import ADMIN, Caller

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class Route:
    manifest: PromptVersion
    variant: str
    experiment: str | None = None  # the automatic rollout whose split assigned this route


@dataclass(frozen=True)
class TaskEntry:
    record: TaskRecord
    versions: dict[int, PromptVersion]
    aliases: dict[str, int]
    rollout: RolloutSpec | None
    latest: int | None
    archived: frozenset[int] = frozenset()
    broken: dict[str, int] = field(default_factory=dict)  # alias -> its unservable version
    fallbacks: dict[str, int] = field(default_factory=dict)  # broken alias -> its servable previous version
    broken_variants: dict[str, int] = field(default_factory=dict)  # rollout variant -> its unservable version


def sticky_point(task: str, key: str) -> float:
    """A stable point in [0, 1) for (task, routing key), identical on every replica."""
    digest = hashlib.sha256(f"{task}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_variant(rollout: RolloutSpec, task: str, routing_key: str | None, rng: random.Random) -> int:
    point = sticky_point(task, routing_key) if routing_key and rollout.sticky else rng.random()
    total = sum(variant.weight for variant in rollout.variants)
    cumulative = 0.0
    for index, variant in enumerate(rollout.variants):
        cumulative += variant.weight / total
        if point < cumulative:
            return index
    return len(rollout.variants) - 1


@dataclass
class RegistryView:
    registry: Registry
    validate: Callable[[PromptVersion], object] = lambda manifest: None
    on_rejected: Callable[[PromptVersion, str], None] = lambda manifest, problem: None
    on_unreadable: Callable[[str, str | None], None] = lambda task, problem: None
    on_broken: Callable[[str, str, int | None], None] = lambda task, alias, version: None
    on_broken_variant: Callable[[str, str, int | None], None] = lambda task, variant, version: None
    retry_rejected_s: float = 30.0
    full_scan_interval_s: float = 300.0
    cursor: int | None = None  # the next change-feed entry to read; None: scan everything next
    scanned_at: float = 0.0
    unreadable: set[str] = field(default_factory=set)
    rejected_at: dict[tuple[str, int, str], float] = field(default_factory=dict)
    entries: dict[str, TaskEntry] = field(default_factory=dict)
    tenants: list[TenantRecord] = field(default_factory=list)
    rejected: dict[tuple[str, int, str], str] = field(default_factory=dict)
    accepted: set[tuple[str, int, str]] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- routing
    def task(self, name: str, caller: Caller = ADMIN) -> TaskEntry:
        """The task's entry; a task the caller may not see is unknown to it, in the same words."""
        entry = self.entries.get(name) if caller.sees(name) else None
        if entry is None:
            raise NotFoundError(f"unknown task {name!r}")
        return entry

    def route(self, task: str, version: int | None = None, alias: str | None = None,
              routing_key: str | None = None) -> Route:
        entry = self.task(task)
        if version is not None:
            return Route(self._manifest(entry, version), f"v{version}")
        if alias is not None:
            route = self._alias_route(entry, alias)
            if route is None:
                raise NotFoundError(f"task {task!r} has no alias {alias!r}")
            return route
        if entry.rollout is None:
            return self._default_route(entry)
        with self._lock:
            chosen = entry.rollout.variants[pick_variant(entry.rollout, task, routing_key, self._rng)]
        if chosen.name not in entry.broken_variants:
            return Route(self._manifest(entry, chosen.version), chosen.name, entry.rollout.experiment)
        try:
            return Route(self._default_route(entry).manifest, f"{chosen.name}-fallback")
        except (NotFoundError, RouteUnavailable) as exc:
            raise RouteUnavailable(f"{task} rollout variant {chosen.name} (version {chosen.version}) is not servable, "
                                   f"and neither is the task without its rollout: {exc}") from exc

    def servable(self, task: str, alias: str | None = None) -> bool:
        """Whether a request for `task` (or `task:alias`) would be served now, without routing one."""
        try:
            entry = self.task(task)
            if alias is not None:
                return self._alias_route(entry, alias) is not None
            if entry.rollout is not None and any(v.name not in entry.broken_variants for v in entry.rollout.variants):
                return True
            self._default_route(entry)
            return True
        except (NotFoundError, RouteUnavailable):
            return False

    def _default_route(self, entry: TaskEntry) -> Route:
        """The route without a rollout: the `production` alias, else the latest version."""
        route = self._alias_route(entry, DEFAULT_ALIAS)
        if route is not None:
            return route
        if entry.latest is None:
            raise NotFoundError(f"task {entry.record.spec.name!r} has no servable version")
        return Route(self._manifest(entry, entry.latest), "latest")

    def _alias_route(self, entry: TaskEntry, alias: str) -> Route | None:
        """The alias's route, its declared fallback, a refusal if it is broken, or None if there is no such alias."""
        if alias in entry.aliases:
            return Route(self._manifest(entry, entry.aliases[alias]), alias)
        if alias in entry.fallbacks:
            return Route(self._manifest(entry, entry.fallbacks[alias]), f"{alias}-fallback")
        if alias in entry.broken:
            manifest = entry.versions[entry.broken[alias]]
            problem = self.rejected.get((manifest.task, manifest.version, manifest.sha256), "not servable")
            raise RouteUnavailable(f"{manifest.task}:{alias} points at version {manifest.version}, which is not "
                                   f"servable ({problem}); fix the version or move the alias")
        return None

    def _manifest(self, entry: TaskEntry, version: int) -> PromptVersion:
        manifest = entry.versions.get(version)
        if manifest is None:
            raise NotFoundError(f"task {entry.record.spec.name!r} has no version {version}")
        problem = self.rejected.get((manifest.task, manifest.version, manifest.sha256))
        if problem is not None:
            raise NotFoundError(f"{manifest.task}@{manifest.version} is not servable: {problem}")
        return manifest

    # --------------------------------------------------------------- refresh
    def refresh(self) -> None:
        """Bring the view up to date with the registry (see the module docstring). A task that
        cannot be read keeps its previous entry (none, if it never could be read) and is
        reported by name through `on_unreadable(task, problem)`; `on_unreadable(task, None)`
        once it reads again. Every other task refreshes normally."""
        now = time.monotonic()
        if self.cursor is not None and now - self.scanned_at < self.full_scan_interval_s:
            changed, cursor = self.registry.feed.since(self.cursor)
            if changed is not None:
                due = [key for key in self.rejected if now - self.rejected_at[key] >= self.retry_rejected_s]
                self.cursor = cursor
                if TENANTS in changed:
                    changed.discard(TENANTS)
                    self.tenants = self.registry.tenants.all()
                if changed or due or self.unreadable:
                    self.entries = self._reload(changed | {key[0] for key in due} | self.unreadable, dict(self.entries))
                for key in due:  # one no longer routed was not retried: its task waits a full interval again
                    self.rejected_at[key] = max(self.rejected_at[key], now)
                return
        cursor = self.registry.feed.tail()  # taken before the scan: nothing written during it is missed
        self.entries = self._reload(self.registry.tasks.names(), {})
        self.tenants = self.registry.tenants.all()
        # the interval runs from the scan's end: a scan slower than the interval is not run back to back
        self.cursor, self.scanned_at = cursor, time.monotonic()

    def _reload(self, names: Iterable[str], entries: dict[str, TaskEntry]) -> dict[str, TaskEntry]:
        """`entries` with each named task reloaded from the registry, as many tasks at a time as
        the storage serves reads at once (on an object store each task costs a few round trips,
        which threads overlap; a local disk is fastest from one thread)."""
        workers = self.registry.storage.concurrent_reads
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="promptmux-refresh") as pool:
                loaded = list(pool.map(self._try_load, names))
        else:
            loaded = [self._try_load(name) for name in names]
        for name, entry, problem in loaded:
            if problem is not None:
                log.warning("registry refresh: task %s unreadable (%s); keeping its previous routes", name, problem)
                self.unreadable.add(name)
            else:
                self.unreadable.discard(name)
            self.on_unreadable(name, problem)
            if entry is not None:
                entries[name] = entry
            else:
                entries.pop(name, None)  # deleted
        return entries

    def _try_load(self, name: str) -> tuple[str, TaskEntry | None, str | None]:
        """The task's new entry, or its previous one (None if it has none) and the problem;
        (None, None) for a task that was deleted."""
        try:
            return name, self._load(name, self.entries.get(name)), None
        except PromptmuxError as exc:
            if isinstance(exc, NotFoundError) and not self.registry.tasks.exists(name):
                return name, None, None
            return name, self.entries.get(name), str(exc)

    def _load(self, name: str, previous: TaskEntry | None) -> TaskEntry:
        record = self.registry.tasks.get(name)
        known = previous.versions if previous else {}
        versions = {v: known[v] if v in known else self.registry.versions.get(name, v)
                    for v in self.registry.versions.numbers(name, known)}
        archived = frozenset(self.registry.versions.archived(name))
        newest_first = sorted((v for v in versions if v not in archived), reverse=True)
        latest = next((v for v in newest_first if self._servable(versions[v])), None)
        aliases, broken, fallbacks = {}, {}, {}
        for alias, pointer in self.registry.aliases.records(name).items():
            if pointer.version not in versions:
                continue
            if self._servable(versions[pointer.version]):
                aliases[alias] = pointer.version
                continue
            broken[alias] = pointer.version
            if pointer.previous in versions and self._servable(versions[pointer.previous]):
                fallbacks[alias] = pointer.previous
        self._report_changes(name, previous.broken if previous else {}, broken, self.on_broken)
        rollout = self.registry.rollouts.get(name)
        broken_variants = {v.name: v.version for v in (rollout.variants if rollout else [])
                           if v.version not in versions or not self._servable(versions[v.version])}
        self._report_changes(name, previous.broken_variants if previous else {}, broken_variants,
                             self.on_broken_variant)
        return TaskEntry(record, versions, aliases, rollout, latest, archived, broken, fallbacks, broken_variants)

    @staticmethod
    def _report_changes(task: str, before: dict[str, int], now: dict[str, int],
                        report: Callable[[str, str, int | None], None]) -> None:
        """Report each alias or variant that broke (its version) or healed (None) since the last refresh."""
        for name in before.keys() | now.keys():
            if before.get(name) != now.get(name):
                report(task, name, now.get(name))

    def _servable(self, manifest: PromptVersion) -> bool:
        """Validate a routed version once; remember the verdict (versions are immutable)."""
        key = (manifest.task, manifest.version, manifest.sha256)
        if key in self.accepted:
            return True
        if key in self.rejected and time.monotonic() - self.rejected_at[key] < self.retry_rejected_s:
            return False
        try:
            self.validate(manifest)
        except PromptmuxError as exc:
            if key not in self.rejected:
                log.error("refusing %s@%s: %s", manifest.task, manifest.version, exc)
                self.on_rejected(manifest, str(exc))
            self.rejected[key], self.rejected_at[key] = str(exc), time.monotonic()
            return False
        if self.rejected.pop(key, None) is not None:
            log.warning("%s@%s validates again; serving it", manifest.task, manifest.version)
        self.accepted.add(key)
        return True
