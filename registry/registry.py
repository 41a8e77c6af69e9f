"""The registry: tasks, their immutable prompt versions, aliases and rollouts.

Layout under the root (any fsspec URL)::

    tasks/<task>/task.json                   TaskRecord (spec + base-model fingerprint)
    tasks/<task>/versions/<n>/               a PEFT adapter directory + promptmux.json
    tasks/<task>/aliases/<alias>.json        AliasRecord
    tasks/<task>/rollout.json                RolloutSpec
    tasks/<task>/archived/<n>                marker: version n is archived
    changes/<n>.json                         the change feed (`change_feed.py`): one entry per routing edit, for servers

Versions are claimed lock-free (`Storage.publish_dir` refuses an existing directory, so
concurrent writers retry with the next number; on object stores the claim is a
conditional write, so this holds across machines); alias, rollout and archive edits take
the task's lock because each checks the others (an alias may not point at an archived
version, a version may not be archived while something points at it). That lock is a
`flock` on local disks and in-process only on object stores: run alias and rollout edits of
one task from one place at a time there (registrations may come from anywhere).
Every edit that changes routing ends with an entry in the change feed, and is journaled
(`edits.py`): it completes, or leaves nothing visible, even if its writer is killed or the
disk fills half-way.
"""

import difflib
import os
import secrets
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
from pydantic import BaseModel, ValidationError

from promptmux.registry.change_feed import ChangeFeed, FeedKind
from promptmux.registry.edits import Edit, EditJournal
from promptmux.registry.errors import (
    ConflictError,
    CorruptFileError,
    IncompatiblePromptError,
    InvalidArtifactError,
    NotFoundError,
    PromptmuxError,
    StorageError,
    describe,
)
from promptmux.registry.history import MANUAL, HistoryEntry
from promptmux.registry.layout import CONFIG_FILE, EXPORT_FILE, MANIFEST_FILE, TENSOR_FILE
from promptmux.registry.names import parse_version, validate_alias, validate_name
from promptmux.registry.policy import Outcome, RolloutDecision, RolloutPolicy, ServedWindow
from promptmux.registry.schemas import (
    AliasRecord,
    BaseModelFingerprint,
    ExportedTask,
    PromptVersion,
    RolloutSpec,
    TaskRecord,
    TaskSpec,
    TaskView,
    VersionView,
    utc_now,
)
from promptmux.registry.storage import LocalStorage, Storage, open_storage

if TYPE_CHECKING:
    import torch

    from promptmux.registry.methods import Prompt

REGISTRY_ENV = "PROMPTMUX_REGISTRY"
MAX_CLAIM_ATTEMPTS = 10_000
SchemaT = TypeVar("SchemaT", bound=BaseModel)
ClaimT = TypeVar("ClaimT")
POLICY_FILE = "rollout-policy.json"
DEFAULT_ALIAS = "production"


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



def _artifact() -> ModuleType:
    """Tensors' code (torch, safetensors, peft), loaded when a tensor is first touched: metadata
    commands such as `registry list` never pay for it."""
    from promptmux.registry import artifact

    return artifact


def _methods() -> ModuleType:
    """The PEFT methods' code (torch), loaded as lazily as `_artifact`."""
    from promptmux.registry import methods

    return methods

class Registry:
    """Versioned soft prompts per task, on local disk or any fsspec URL."""

    def __init__(self, uri: str | None = None, create: bool = True, storage: Storage | None = None) -> None:
        self.storage: Storage = storage or open_storage(uri or default_registry_uri(), create)
        self.feed = ChangeFeed(self.storage)
        self.journal = EditJournal(self.storage, self.feed)

    @property
    def uri(self) -> str:
        return self.storage.uri

    # ------------------------------------------------------------------ tasks
    def create_task(self, spec: TaskSpec, base_fingerprint: BaseModelFingerprint, exist_ok: bool = False) -> TaskRecord:
        """Create a task; with `exist_ok`, return the existing one if its base model matches."""
        record = TaskRecord(spec=spec, base_fingerprint=base_fingerprint)
        data = record.model_dump_json(indent=2).encode()
        if self._announced(spec.name, "task", lambda: self.storage.create(f"{_task_rel(spec.name)}/task.json", data)):
            return record
        if not exist_ok:
            raise ConflictError(f"task {spec.name!r} already exists")
        existing = self.get_task(spec.name)
        problem = existing.base_fingerprint.misfit(base_fingerprint)
        if problem:
            raise ConflictError(f"task {spec.name!r} exists for another base model: {problem}")
        return existing

    def get_task(self, task: str) -> TaskRecord:
        rel = f"{_task_rel(task)}/task.json"
        data = self._read_or_none(rel)
        if data is None:
            guess = difflib.get_close_matches(task, self.list_tasks(), n=1, cutoff=0.7)
            raise NotFoundError(f"unknown task {task!r}" + (f"; did you mean {guess[0]}?" if guess else ""))
        return self._parse(TaskRecord, data, rel)

    def has_task(self, task: str) -> bool:
        return self.storage.exists(f"{_task_rel(task)}/task.json")

    def list_tasks(self) -> list[str]:
        return [name for name in self.storage.listdir("tasks") if self.has_task(name)]

    # --------------------------------------------------------------- versions
    def register(
        self,
        task: str,
        prompt: "torch.Tensor | Prompt",
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
        record = self.get_task(task)
        prompt = self._checked(prompt, base_fingerprint, record.base_fingerprint, f"{task} (new version)")
        if parent_version is not None:
            self.get_version(task, parent_version)
        template = PromptVersion(
            task=task,
            version=1,
            method=prompt.method,
            task_id=prompt.task_id,
            num_virtual_tokens=prompt.embeddings.shape[0],
            token_dim=prompt.embeddings.shape[1],
            dtype=_artifact().dtype_name(prompt.embeddings),
            base_model=record.spec.base_model,
            base_fingerprint=record.base_fingerprint,
            init_method=init_method,
            init_text=init_text,
            training=training or {},
            metrics=metrics or {},
            data_fingerprint=data_fingerprint,
            parent_version=parent_version,
            note=note,
            sha256=_artifact().tensors_sha256(prompt.tensors),
        )

        def claim() -> PromptVersion:
            for _ in range(MAX_CLAIM_ATTEMPTS):
                manifest = template.model_copy(update={"version": max(self._claimed_numbers(task), default=0) + 1})
                if self.storage.publish_dir(_version_rel(task, manifest.version),
                                            _artifact().version_files(manifest, prompt)):
                    return manifest
            raise ConflictError(f"could not claim a version number for task {task!r}")

        return self._announced(task, "version", claim)

    @staticmethod
    def _checked(prompt: "torch.Tensor | Prompt", made_on: BaseModelFingerprint, expected: BaseModelFingerprint,
                 source: str) -> "Prompt":
        """`prompt` as a checked `Prompt` (a bare tensor is a soft prompt), fitting the task's base model."""
        methods = _methods()
        if not isinstance(prompt, methods.Prompt):
            prompt = methods.Prompt("prompt_tuning", {methods.EMBEDDINGS: prompt})
        prompt.tensors = methods.prompt_tensors(prompt.tensors, prompt.method, source)
        methods.check_consistent(prompt, source)
        width = prompt.embeddings.shape[1] if prompt.method != "prefix_tuning" else None
        problem = expected.misfit(made_on, width)
        if problem:
            raise IncompatiblePromptError(f"prompt does not fit the task's base model: {problem}")
        methods.check_fits(prompt, made_on, source)
        return prompt

    def versions(self, task: str, include_archived: bool = True) -> list[PromptVersion]:
        self.get_task(task)
        archived = self.archived_versions(task)
        return [
            self.get_version(task, number)
            for number in self.version_numbers(task)
            if include_archived or number not in archived
        ]

    def get_version(self, task: str, version: int) -> PromptVersion:
        rel = f"{_version_rel(task, version)}/{MANIFEST_FILE}"
        data = self._read_or_none(rel)
        if data is None:
            self.get_task(task)
            raise NotFoundError(f"task {task!r} has no version {version}")
        return self._parse(PromptVersion, data, rel)

    def latest(self, task: str) -> PromptVersion:
        archived = self.archived_versions(task)
        live = [number for number in self.version_numbers(task) if number not in archived]
        if not live:
            self.get_task(task)
            raise NotFoundError(f"task {task!r} has no active versions: every one is archived (bring one back with "
                                f"promptmux registry unarchive {task} VERSION)")
        return self.get_version(task, max(live))

    def resolve(self, task: str, ref: int | str | None = None) -> PromptVersion:
        """A version by number, alias name, or `latest`/None."""
        if ref is None or ref == "latest":
            return self.latest(task)
        if isinstance(ref, int):
            return self.get_version(task, ref)
        if parse_version(ref) is not None:
            return self.get_version(task, int(ref))
        aliases = self.aliases(task)
        if ref not in aliases:
            raise NotFoundError(f"task {task!r} has no alias {ref!r}")
        return self.get_version(task, aliases[ref])

    def version_uri(self, task: str, version: int) -> str:
        return self.storage.url(_version_rel(task, version))

    def load_prompt(self, task: str, version: int) -> tuple[PromptVersion, "Prompt"]:
        """Manifest and prompt of a version, its tensors checked against the manifest's sha256 and shape."""
        manifest = self.get_version(task, version)
        source, rel = f"{task}@{version}", f"{_version_rel(task, version)}/{TENSOR_FILE}"
        local = self.storage.local_path(rel)
        if local is not None and os.path.isfile(local):
            tensors = _artifact().read_tensor_file(local, source)
        else:
            tensors = _artifact().decode_tensors(self.storage.read_bytes(rel), source)
        prompt = _methods().Prompt(manifest.method, _methods().prompt_tensors(tensors, manifest.method, source),
                                   task_id=manifest.task_id)
        problem = _mismatch(manifest, prompt)
        if problem:
            raise InvalidArtifactError(f"{source}: {problem}")
        if manifest.method == "prefix_tuning":  # its layout is in its config
            prompt.peft_config = _methods().parse_config(self.storage.read_bytes(f"{_version_rel(task, version)}/{CONFIG_FILE}"),
                                                         source)
        return manifest, prompt

    def archive(self, task: str, version: int) -> None:
        """Retire a version: it stays loadable by number but is no longer `latest`."""
        with self._editing(task):
            self.get_version(task, version)
            users = [f"alias {name!r}" for name, target in self.aliases(task).items() if target == version]
            rollout = self.rollout(task)
            if rollout and any(variant.version == version for variant in rollout.variants):
                users.append("the rollout")
            if users:
                raise ConflictError(f"version {version} of {task!r} is in use by {', '.join(users)}; move them first")
            self.journal.run(Edit(task=task, what="archive", writes={f"archived/{version}": utc_now().isoformat()}))

    def unarchive(self, task: str, version: int) -> None:
        """Bring an archived version back: it counts for `latest` again."""
        with self._editing(task):
            self.get_version(task, version)
            if version not in self.archived_versions(task):
                raise ConflictError(f"version {version} of {task!r} is not archived")
            self.journal.run(Edit(task=task, what="archive", removes=[f"archived/{version}"]))

    def delete_task(self, task: str, force: bool = False) -> None:
        """Remove a task with every version, alias, rollout and record, refused while an alias
        or a rollout routes traffic to it unless `force`. Its `task.json` goes first, in one
        journaled edit that servers see, so a task half-deleted by a crash is already gone to
        every reader, and deleting it again removes what is left."""
        if self.has_task(task):
            with self._editing(task):
                users = [f"alias {name}→{version}" for name, version in sorted(self.aliases(task).items())]
                users += ["its rollout"] if self.rollout(task) else []
                if users and not force:
                    raise ConflictError(f"task {task!r} is served through {', '.join(users)}; move them, or delete "
                                        "anyway with --force")
                self.journal.run(Edit(task=task, what="task", removes=["task.json"]))
        elif not self.storage.exists(_task_rel(task)):
            self.get_task(task)  # unknown: says so, with a guess
        self.storage.remove_tree(_task_rel(task))

    def archived_versions(self, task: str) -> set[int]:
        return {number for name in self.storage.listdir(f"{_task_rel(task)}/archived")
                if (number := parse_version(name)) is not None}

    # ------------------------------------------------------ aliases, rollouts
    def aliases(self, task: str) -> dict[str, int]:
        return {alias: record.version for alias, record in self.alias_records(task).items()}

    def alias_records(self, task: str) -> dict[str, AliasRecord]:
        rel = f"{_task_rel(task)}/aliases"
        result = {}
        for filename in self.storage.listdir(rel):
            if filename.endswith(".json") and not filename.startswith("."):
                data = self._read_or_none(f"{rel}/{filename}")
                if data is not None:
                    result[filename.removesuffix(".json")] = self._parse(AliasRecord, data, f"{rel}/{filename}")
        return result

    def set_alias(self, task: str, alias: str, version: int, actor: str = MANUAL, reason: str = "") -> None:
        """Point `alias` at `version` (nothing happens if it points there already)."""
        validate_alias(alias)
        with self._editing(task):
            self._check_servable(task, version)
            edit = self._alias_edit(task, alias, version, actor, reason)
            if edit is not None:
                self.journal.run(edit)

    def _alias_edit(self, task: str, alias: str, version: int, actor: str, reason: str) -> Edit | None:
        """The edit that moves `alias` to `version`, recording where it pointed before (servers
        fall back to that version while this one fails validation); None if it is there already."""
        current = self.alias_records(task).get(alias)
        if current is not None and current.version == version:
            return None
        was = current.version if current else None
        change = HistoryEntry(actor=actor, action="alias", reason=reason, details={"alias": alias, "version": version, "was": was})
        return Edit(task=task, what="alias", history=[change],
                    writes={f"aliases/{alias}.json": AliasRecord(version=version, previous=was).model_dump_json()})

    def delete_alias(self, task: str, alias: str, actor: str = MANUAL, reason: str = "") -> None:
        validate_alias(alias)
        with self._editing(task):
            was = self.aliases(task).get(alias)
            if was is None:
                raise NotFoundError(f"task {task!r} has no alias {alias!r}")
            change = HistoryEntry(actor=actor, action="alias-delete", reason=reason, details={"alias": alias, "was": was})
            self.journal.run(Edit(task=task, what="alias", removes=[f"aliases/{alias}.json"], history=[change]))

    def rollout(self, task: str) -> RolloutSpec | None:
        rel = f"{_task_rel(task)}/rollout.json"
        data = self._read_or_none(rel)
        return None if data is None else self._parse(RolloutSpec, data, rel)

    def set_rollout(self, task: str, spec: RolloutSpec, actor: str = MANUAL, reason: str = "") -> None:
        """Split the task's default traffic; set by hand, it stops an automatic rollout."""
        with self._editing(task):
            for variant in spec.variants:
                self._check_servable(task, variant.version)
            split = {variant.name: f"{variant.version}={variant.weight:g}" for variant in spec.variants}
            change = HistoryEntry(actor=actor, action="rollout", reason=reason, details=split)
            self.journal.run(Edit(task=task, what="rollout", writes={"rollout.json": spec.model_dump_json(indent=2)},
                                  removes=[POLICY_FILE] if actor == MANUAL else [], history=[change]))

    def clear_rollout(self, task: str, actor: str = MANUAL, reason: str = "") -> None:
        """Remove the rollout file, also one that cannot be parsed any more (and any automatic rollout)."""
        with self._editing(task):
            if not self.storage.exists(f"{_task_rel(task)}/rollout.json"):
                raise NotFoundError(f"task {task!r} has no rollout")
            change = HistoryEntry(actor=actor, action="rollout-clear", reason=reason)
            self.journal.run(Edit(task=task, what="rollout", removes=["rollout.json", POLICY_FILE], history=[change]))

    # ------------------------------------------------------ automatic rollouts
    def auto_rollout(self, task: str) -> RolloutPolicy | None:
        rel = f"{_task_rel(task)}/{POLICY_FILE}"
        data = self._read_or_none(rel)
        return None if data is None else self._parse(RolloutPolicy, data, rel)

    def set_auto_rollout(self, task: str, policy: RolloutPolicy, actor: str = MANUAL, reason: str = "") -> None:
        """Start an automatic rollout: its policy, and the split of its first step, in one edit."""
        with self._editing(task):
            for version in (policy.control, policy.candidate):
                self._check_servable(task, version)
            spec = policy.split()
            split = {variant.name: f"{variant.version}={variant.weight:g}" for variant in spec.variants}
            change = HistoryEntry(actor=actor, action="rollout", reason=reason, details=split)
            self.journal.run(Edit(task=task, what="rollout", history=[change], writes={
                "rollout.json": spec.model_dump_json(indent=2), POLICY_FILE: policy.model_dump_json(indent=2),
                f"experiments/{policy.experiment}.json": policy.model_dump_json(indent=2)}))

    def experiments(self, task: str) -> list[RolloutPolicy]:
        """Every automatic rollout the task has had, running or ended, as it started (its
        record under `experiments/`), oldest first; one started before these records existed
        is there while it runs."""
        self.get_task(task)
        started = {policy.experiment: policy for policy in self._records(task, "experiments", RolloutPolicy)}
        running = self.auto_rollout(task)
        if running is not None:
            started.setdefault(running.experiment, running)
        return sorted(started.values(), key=lambda policy: policy.started_at)

    def decisions(self, task: str, experiment: str) -> list[RolloutDecision]:
        """The decisions recorded for one experiment, step by step, its end (if any) last."""
        found = self._records(task, "decisions", RolloutDecision, prefix=f"{experiment}-")
        return sorted(found, key=lambda decision: (decision.winner is not None, decision.step))

    def decision(self, task: str, policy: RolloutPolicy) -> RolloutDecision | None:
        """The decision recorded for the policy's current step, if any: a controller that died
        before applying it left it for the next one to apply (never to decide again)."""
        for name in (f"{policy.experiment}-end", f"{policy.experiment}-step{policy.step}"):
            rel = f"{_task_rel(task)}/decisions/{name}.json"
            data = self._read_or_none(rel)
            if data is not None:
                return self._parse(RolloutDecision, data, rel)
        return None

    def record_decision(self, task: str, decision: RolloutDecision) -> RolloutDecision:
        """Write a decision as one create-only record before anything acts on it; the stored
        one is returned (another controller's, if it decided this step first)."""
        rel = f"{_task_rel(task)}/decisions/{decision.file_name()}"
        try:
            created = self.storage.create(rel, decision.model_dump_json(indent=2).encode())
        except OSError as exc:
            raise StorageError(f"cannot write to the registry at {self.uri}: {exc.strerror or exc}; the decision on "
                               f"{task} was not recorded, nothing changed: it will be made again") from exc
        return decision if created else self._parse(RolloutDecision, self.storage.read_bytes(rel), rel)

    def apply_decision(self, task: str, decision: RolloutDecision) -> bool:
        """Carry out a recorded decision, once: the next step's split and policy, or `production`
        on the winner and the rollout ended, with the history, all in one journaled edit.
        False when it was carried out already."""
        with self._editing(task):
            policy = self.auto_rollout(task)
            if policy is None or (policy.experiment, policy.step) != (decision.experiment, decision.step):
                return False
            self.journal.run(self._decision_edit(task, decision))
            return True

    def _decision_edit(self, task: str, decision: RolloutDecision) -> Edit:
        edit_id = decision.file_name().removesuffix(".json")
        if decision.next_policy is not None:
            return Edit(id=edit_id, task=task, what="rollout", history=[decision.change], writes={
                "rollout.json": decision.next_policy.split().model_dump_json(indent=2),
                POLICY_FILE: decision.next_policy.model_dump_json(indent=2)})
        assert decision.winner is not None  # an ending decision names its winner
        moved = self._alias_edit(task, DEFAULT_ALIAS, decision.winner, decision.change.actor, decision.change.reason)
        return Edit(id=edit_id, task=task, what="rollout", writes=moved.writes if moved else {},
                    removes=["rollout.json", POLICY_FILE], history=[*(moved.history if moved else []), decision.change])

    def finish_pending(self, task: str | None = None) -> list[Edit]:
        """Finish every edit a writer left half-done (of one task, or all), each under its task's lock."""
        finished = []
        for name in sorted({edit.task for edit in self.journal.pending(task)}):
            with self._task_lock(name):
                finished += self.journal.finish(name)
        return finished

    def feedback_key(self) -> bytes:
        """The key serving replicas sign feedback ids with, made on first use: every replica
        reading this registry, on any node, shares it."""
        rel = "keys/feedback.key"
        data = self._read_or_none(rel)
        if data is None:
            with self.storage.lock("keys/feedback"):
                data = self._read_or_none(rel)
                if data is None:
                    data = secrets.token_hex(32).encode()
                    self.storage.write_bytes(rel, data)
        return bytes.fromhex(data.decode())

    def record_outcome(self, outcome: Outcome) -> bool:
        """Store one piece of feedback durably, claimed with a create-only write: True for the
        one claim of a request id (whatever the number of replicas and concurrent posts), False
        when the same outcome was stored already, `ConflictError` when a different one was (the
        first stands)."""
        rel = f"{_task_rel(outcome.task)}/outcomes/{outcome.file_name()}"
        try:
            if self.storage.create(rel, outcome.model_dump_json().encode()):
                return True
        except OSError as exc:
            raise StorageError(f"cannot write to the registry at {self.uri}: {exc.strerror or exc}; the feedback was not "
                               "recorded, nothing changed: send it again") from exc
        stored = self._parse(Outcome, self.storage.read_bytes(rel), rel)
        if (stored.label, stored.score) != (outcome.label, outcome.score):
            given = f"label {stored.label!r}" if stored.label is not None else f"score {stored.score:g}"
            raise ConflictError(f"feedback for this output was recorded already, with {given}; the first stands")
        return False

    def outcome_files(self, task: str, kind: str = "outcomes") -> list[str]:
        """Names of a task's outcome files (`kind="serving"`: its served windows)."""
        return [name for name in self.storage.listdir(f"{_task_rel(task)}/{kind}") if name.endswith(".json")]

    def read_outcome(self, task: str, name: str) -> Outcome:
        rel = f"{_task_rel(task)}/outcomes/{name}"
        return self._parse(Outcome, self.storage.read_bytes(rel), rel)

    def record_served(self, task: str, window: ServedWindow) -> None:
        """Append one replica's window of what it served (an immutable file of its own)."""
        self.storage.write_bytes(f"{_task_rel(task)}/serving/{window.file_name()}", window.model_dump_json().encode())

    def read_served(self, task: str, name: str) -> ServedWindow:
        rel = f"{_task_rel(task)}/serving/{name}"
        return self._parse(ServedWindow, self.storage.read_bytes(rel), rel)

    # ---------------------------------------------------------------- history
    def history(self, task: str) -> list[HistoryEntry]:
        """Every recorded change of a task, oldest first."""
        self.get_task(task)
        return self._records(task, "history", HistoryEntry)

    def _records(self, task: str, folder: str, schema: type[SchemaT], prefix: str = "") -> list[SchemaT]:
        """The JSON records in one of a task's folders (those whose names start with `prefix`), in name order."""
        rel = f"{_task_rel(task)}/{folder}"
        names = [name for name in self.storage.listdir(rel) if name.startswith(prefix) and name.endswith(".json")]
        return [self._parse(schema, self.storage.read_bytes(f"{rel}/{name}"), f"{rel}/{name}") for name in names]

    # ------------------------------------------------------------- reporting
    def show(self, task: str) -> TaskView:
        record = self.get_task(task)
        aliases = self.aliases(task)
        archived = self.archived_versions(task)
        return TaskView(
            spec=record.spec,
            base_fingerprint=record.base_fingerprint,
            versions=[
                VersionView(
                    manifest=manifest,
                    aliases=sorted(name for name, target in aliases.items() if target == manifest.version),
                    archived=manifest.version in archived,
                    uri=self.version_uri(task, manifest.version),
                )
                for manifest in self.versions(task)
            ],
            aliases=aliases,
            rollout=self.rollout(task),
        )

    def verify(self, task: str | None = None, repair: bool = False) -> list[VerifyResult]:
        """Re-read every version (or one task's): parse, re-hash, compare with its manifest,
        and check that aliases and rollouts point at existing versions. Also report edits a
        writer left half-done and rollout decisions recorded but not applied; with `repair`,
        finish them (each problem is then reported as repaired)."""
        if task is not None:
            self.get_task(task)  # an unknown task is an error, not "0 of 0 verified"
        results = self._unfinished(task, repair)
        for name in [task] if task else self.list_tasks():
            numbers = self.version_numbers(name)
            for number in numbers:
                results.append(VerifyResult(name, number, self._verify_version(name, number)))
            try:
                targets = [(f"alias {alias!r}", v) for alias, v in self.aliases(name).items()]
                rollout = self.rollout(name)
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
        for name in [task] if task else self.list_tasks():
            try:
                policy = self.auto_rollout(name)
                decision = self.decision(name, policy) if policy and name not in busy else None
            except CorruptFileError as exc:
                results.append(VerifyResult(name, None, str(exc)))
                continue
            if decision is not None:
                results.append(VerifyResult(name, None, f"rollout decision {decision.file_name()} "
                                            f"({decision.change.summary()}) recorded but not applied", repaired=repair))
                if repair:
                    self.apply_decision(name, decision)
        return results

    def collect_garbage(self, older_than_s: float = 3600.0) -> int:
        """Remove what killed writers left behind, anywhere in the registry: staging directories
        and temporary files (never visible to readers); only leftovers older than
        `older_than_s`, so writers still at work are untouched."""
        return self.storage.remove_stale_leftovers(older_than_s)

    # ------------------------------------------------------- import / export
    def import_peft(
        self,
        source: str,
        task: str,
        base_fingerprint: BaseModelFingerprint,
        base_model: str,
        note: str = "",
        spec: TaskSpec | None = None,
        task_id: int | None = None,
    ) -> PromptVersion:
        """Register a PEFT adapter directory (local path or fsspec URL) of any prompt-learning
        method (`registry/methods.py`; `task_id` chooses a multitask prompt's task), keeping its
        files as PEFT wrote them, and creating the task if needed: as `spec` says, by default a
        generation task with template `{input}`. A promptmux export keeps its version's init,
        training settings and metrics, and records where it came from (`training.lineage`)."""
        fs, root = fsspec.core.url_to_fs(source)
        root = root.rstrip("/")
        config_bytes = _read_source(fs, f"{root}/{CONFIG_FILE}", source)
        config = _methods().parse_config(config_bytes, source)
        tensor_path = f"{root}/{TENSOR_FILE}"
        if not fs.exists(tensor_path):
            if fs.exists(f"{root}/adapter_model.bin"):
                raise InvalidArtifactError(
                    f"{source}: only a pickled adapter_model.bin was found; promptmux loads safetensors only "
                    "(save the adapter with safe_serialization=True)"
                )
            raise InvalidArtifactError(f"{source}: no {TENSOR_FILE}")
        tensor_bytes = _read_source(fs, tensor_path, source)
        method = _methods().PEFT_TYPES[config["peft_type"]]
        if method == "multitask_prompt_tuning" and task_id is None and config.get("num_tasks") == 1:
            task_id = 0
        prompt = _methods().Prompt(method, _artifact().decode_tensors(tensor_bytes, source), config, task_id,
                                   {CONFIG_FILE: config_bytes, TENSOR_FILE: tensor_bytes})
        expected = self.get_task(task).base_fingerprint if self.has_task(task) else base_fingerprint
        prompt = self._checked(prompt, base_fingerprint, expected, source)  # before a task is created for it
        if not self.has_task(task):
            self.create_task(spec or TaskSpec(name=task, base_model=base_model), base_fingerprint, exist_ok=True)
        imported = {"imported_from": source, "peft_type": config["peft_type"]}
        exported = self.read_export(source)
        if exported is not None:
            origin, manifest = exported
            return self.register(task, prompt, base_fingerprint, init_method=manifest.init_method,
                                 init_text=manifest.init_text, metrics=manifest.metrics,
                                 training={**manifest.training, **imported, "lineage": origin.lineage()},
                                 data_fingerprint=manifest.data_fingerprint, note=note or manifest.note)
        init = str(config.get("prompt_tuning_init") or "").lower().replace("_", "-")
        return self.register(
            task,
            prompt,
            base_fingerprint,
            init_method=f"imported-{method.replace('_', '-')}" + (f" ({init})" if init else ""),
            init_text=config.get("prompt_tuning_init_text"),
            training=imported,
            note=note,
        )

    def read_export(self, source: str) -> tuple[ExportedTask, PromptVersion] | None:
        """What a promptmux export holds beside the PEFT files (the task and where the version
        came from, and the version's manifest); None for a plain PEFT adapter."""
        fs, root = fsspec.core.url_to_fs(source)
        root = root.rstrip("/")
        if not fs.exists(f"{root}/{EXPORT_FILE}"):
            return None
        origin = self._parse(ExportedTask, _read_source(fs, f"{root}/{EXPORT_FILE}", source), f"{source}/{EXPORT_FILE}")
        manifest = self._parse(PromptVersion, _read_source(fs, f"{root}/{MANIFEST_FILE}", source),
                               f"{source}/{MANIFEST_FILE}")
        return origin, manifest

    def export(self, task: str, version: int, destination: str) -> str:
        """Write a version as a PEFT adapter directory at `destination` (path or fsspec URL): its
        files as stored (an imported adapter's as PEFT wrote them), checked first, and beside
        them the task's spec and origin (`ExportedTask`), which PEFT ignores."""
        self.load_prompt(task, version)  # its sha256 and shape
        fs, root = fsspec.core.url_to_fs(destination)
        root = root.rstrip("/")
        if self._holds(fs, root):
            raise ConflictError(f"{destination} is inside the registry {self.uri}; export to a folder outside it")
        if fs.exists(f"{root}/{CONFIG_FILE}") or fs.exists(f"{root}/{TENSOR_FILE}"):
            raise ConflictError(f"{destination} already holds an adapter; choose an empty directory")
        fs.makedirs(root, exist_ok=True)
        # the PEFT files last: an export cut short lacks them, and so can neither be imported as
        # a plain adapter without its task nor block a second export to the same folder
        origin = ExportedTask(spec=self.get_task(task).spec, registry=self.uri, task=task, version=version)
        fs.pipe_file(f"{root}/{EXPORT_FILE}", origin.model_dump_json(indent=2).encode())
        for name in (MANIFEST_FILE, CONFIG_FILE, TENSOR_FILE):
            fs.pipe_file(f"{root}/{name}", self.storage.read_bytes(f"{_version_rel(task, version)}/{name}"))
        return destination

    # --------------------------------------------------------------- helpers
    def _holds(self, fs: fsspec.AbstractFileSystem, path: str) -> bool:
        """Whether `path` on `fs` is this registry's folder or inside it."""
        if type(fs) is not type(self.storage.fs):
            return False
        if isinstance(self.storage, LocalStorage):
            return Path(path).resolve().is_relative_to(Path(self.storage.uri))
        root = self.storage.root.rstrip("/")
        return path == root or path.startswith(f"{root}/")

    def _claimed_numbers(self, task: str) -> list[int]:
        """Every version directory, including one a writer is still (or died) filling."""
        return sorted(number for name in self.storage.listdir(f"{_task_rel(task)}/versions")
                      if (number := parse_version(name)) is not None)

    def version_numbers(self, task: str, known: Collection[int] = ()) -> list[int]:
        """The visible versions: complete directories (a manifest is written last). Versions in
        `known` were seen complete before and are not checked again (versions are immutable)."""
        numbers = self._claimed_numbers(task)
        if self.storage.atomic_publish:
            return numbers
        return [n for n in numbers if n in known or self.storage.exists(f"{_version_rel(task, n)}/{MANIFEST_FILE}")]

    def _check_servable(self, task: str, version: int) -> None:
        self.get_version(task, version)
        if version in self.archived_versions(task):
            raise ConflictError(f"version {version} of {task!r} is archived")

    @contextmanager
    def _task_lock(self, task: str) -> Iterator[None]:
        self.get_task(task)
        with self.storage.lock(f"{_task_rel(task)}/meta"):
            yield

    @contextmanager
    def _editing(self, task: str) -> Iterator[None]:
        """The task's lock, with any edit a writer left half-done finished first: so an edit
        left behind is always the task's latest, and finishing it is always right."""
        with self._task_lock(task):
            self.journal.finish(task)
            yield

    def _announced(self, task: str, what: FeedKind, claim: Callable[[], ClaimT]) -> ClaimT:
        """Run `claim`, a create-only write that makes something new visible (a task, a version),
        between recording and applying its announcement: if it claims nothing (returns a falsy
        value) or fails, the record is withdrawn and nothing changed."""
        edit = Edit(task=task, what=what)
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

    def _parse(self, schema: type[SchemaT], data: bytes, rel: str) -> SchemaT:
        try:
            return schema.model_validate_json(data)
        except ValidationError as exc:
            problems = describe(exc.errors(), "file", limit=3)
            raise CorruptFileError(f"{self.uri.rstrip('/')}/{rel} is corrupt ({problems})") from exc

    def _read_or_none(self, rel: str) -> bytes | None:
        try:
            return self.storage.read_bytes(rel)
        except NotFoundError:
            return None

    def _verify_version(self, task: str, version: int) -> str | None:
        try:
            manifest, _ = self.load_prompt(task, version)
            _methods().parse_config(self.storage.read_bytes(f"{_version_rel(task, version)}/{CONFIG_FILE}"), "")
        except (PromptmuxError, ValueError) as exc:
            return str(exc)
        if manifest.version != version or manifest.task != task:
            return f"manifest names {manifest.task}@{manifest.version}"
        return None


def _mismatch(manifest: PromptVersion, prompt: "Prompt") -> str | None:
    tensor = prompt.embeddings
    if _artifact().tensors_sha256(prompt.tensors) != manifest.sha256:
        return "sha256 of the tensor does not match the manifest (the file was altered or corrupted)"
    if tuple(tensor.shape) != (manifest.num_virtual_tokens, manifest.token_dim) or _artifact().dtype_name(tensor) != manifest.dtype:
        return (
            f"tensor is {tuple(tensor.shape)} {_artifact().dtype_name(tensor)}, manifest says "
            f"({manifest.num_virtual_tokens}, {manifest.token_dim}) {manifest.dtype}"
        )
    return None


def _read_source(fs: fsspec.AbstractFileSystem, path: str, source: str) -> bytes:
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFoundError(f"{source}: {path.rsplit('/', 1)[-1]} not found") from exc


def _task_rel(task: str) -> str:
    return f"tasks/{validate_name(task, 'task name')}"


def _version_rel(task: str, version: int) -> str:
    if not isinstance(version, int) or version < 1:
        raise NotFoundError(f"invalid version {version!r}: versions are positive integers")
    return f"{_task_rel(task)}/versions/{version}"


def _alias_rel(task: str, alias: str) -> str:
    return f"{_task_rel(task)}/aliases/{alias}.json"
