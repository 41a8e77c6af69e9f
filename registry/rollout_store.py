"""Rollouts: a task's traffic split (`rollout.json`), the policy of an automatic rollout
(`rollout-policy.json`), each automatic rollout as it started (`experiments/<id>.json`), and
the decisions made on it (`decisions/`, create-only).

These are the records; the decisions themselves are made in `serving/rollouts/`, which
records one here first and then applies it in one journaled edit: the next step's split and
policy, or `production` on the winner and the rollout's end."""

from promptmux.core.errors import NotFoundError
from promptmux.registry.alias_store import AliasStore
from promptmux.registry.edits import Edit
from promptmux.registry.history import MANUAL, HistoryEntry
from promptmux.registry.policy import RolloutDecision, RolloutPolicy
from promptmux.registry.records import RecordFiles, task_rel
from promptmux.registry.schemas import RolloutSpec
from promptmux.registry.task_store import TaskStore
from promptmux.registry.version_store import VersionStore

POLICY_FILE = "rollout-policy.json"
DEFAULT_ALIAS = "production"


class RolloutStore:
    def __init__(self, files: RecordFiles, tasks: TaskStore, versions: VersionStore, aliases: AliasStore) -> None:
        self.files, self.tasks, self.versions, self.aliases = files, tasks, versions, aliases

    def get(self, task: str) -> RolloutSpec | None:
        return self.files.read(RolloutSpec, f"{task_rel(task)}/rollout.json")

    def set(self, task: str, spec: RolloutSpec, actor: str = MANUAL, reason: str = "") -> None:
        """Split the task's default traffic; it stops an automatic rollout (holding its split, when
        set to the split it had: a pause)."""
        with self.tasks.editing(task):
            for variant in spec.variants:
                self.versions.check_servable(task, variant.version)
            self.files.journal.run(Edit(task=task, what="rollout", writes={"rollout.json": spec.model_dump_json(indent=2)},
                                        removes=[POLICY_FILE],
                                        history=[_split_entry(spec, actor, reason)]))

    def clear(self, task: str, actor: str = MANUAL, reason: str = "") -> None:
        """Remove the rollout file, also one that cannot be parsed any more (and any automatic rollout)."""
        with self.tasks.editing(task):
            if not self.files.storage.exists(f"{task_rel(task)}/rollout.json"):
                raise NotFoundError(f"task {task!r} has no rollout")
            change = HistoryEntry(actor=actor, action="rollout-clear", reason=reason)
            self.files.journal.run(Edit(task=task, what="rollout", removes=["rollout.json", POLICY_FILE], history=[change]))

    def policy(self, task: str) -> RolloutPolicy | None:
        """The running automatic rollout's policy, or None."""
        return self.files.read(RolloutPolicy, f"{task_rel(task)}/{POLICY_FILE}")

    def start(self, task: str, policy: RolloutPolicy, actor: str = MANUAL, reason: str = "") -> None:
        """Start an automatic rollout: its policy, its record, and the split of its first step, in one edit."""
        with self.tasks.editing(task):
            for version in (policy.control, policy.candidate):
                self.versions.check_servable(task, version)
            spec = policy.split()
            self.files.journal.run(Edit(task=task, what="rollout", history=[_split_entry(spec, actor, reason)], writes={
                "rollout.json": spec.model_dump_json(indent=2), POLICY_FILE: policy.model_dump_json(indent=2),
                f"experiments/{policy.experiment}.json": policy.model_dump_json(indent=2)}))

    def experiments(self, task: str) -> list[RolloutPolicy]:
        """Every automatic rollout the task has had, running or ended, as it started (its
        record under `experiments/`), oldest first; one started before these records existed
        is there while it runs."""
        self.tasks.get(task)
        started = {policy.experiment: policy for policy in self.files.records(task, "experiments", RolloutPolicy)}
        running = self.policy(task)
        if running is not None:
            started.setdefault(running.experiment, running)
        return sorted(started.values(), key=lambda policy: policy.started_at)

    def decisions(self, task: str, experiment: str) -> list[RolloutDecision]:
        """The decisions recorded for one experiment, step by step, its end (if any) last."""
        found = self.files.records(task, "decisions", RolloutDecision, prefix=f"{experiment}-")
        return sorted(found, key=lambda decision: (decision.winner is not None, decision.step))

    def decision(self, task: str, policy: RolloutPolicy) -> RolloutDecision | None:
        """The decision recorded for the policy's current step, if any: a controller that died
        before applying it left it for the next one to apply (never to decide again)."""
        for name in (f"{policy.experiment}-end", f"{policy.experiment}-step{policy.step}"):
            decision = self.files.read(RolloutDecision, f"{task_rel(task)}/decisions/{name}.json")
            if decision is not None:
                return decision
        return None

    def record_decision(self, task: str, decision: RolloutDecision) -> RolloutDecision:
        """Write a decision as one create-only record before anything acts on it; the stored
        one is returned (another controller's, if it decided this step first)."""
        rel = f"{task_rel(task)}/decisions/{decision.file_name()}"
        try:
            created = self.files.storage.create(rel, decision.model_dump_json(indent=2).encode())
        except OSError as exc:
            raise self.files.write_failed(exc, f"the decision on {task} was not recorded, nothing changed: it will be "
                                          "made again") from exc
        return decision if created else self.files.parse(RolloutDecision, self.files.storage.read_bytes(rel), rel)

    def apply_decision(self, task: str, decision: RolloutDecision) -> bool:
        """Carry out a recorded decision, once: the next step's split and policy, or `production`
        on the winner and the rollout ended, with the history, all in one journaled edit.
        False when it was carried out already."""
        with self.tasks.editing(task):
            policy = self.policy(task)
            if policy is None or (policy.experiment, policy.step) != (decision.experiment, decision.step):
                return False
            self.files.journal.run(self._decision_edit(task, decision))
            return True

    def _decision_edit(self, task: str, decision: RolloutDecision) -> Edit:
        edit_id = decision.file_name().removesuffix(".json")
        if decision.next_policy is not None:
            return Edit(id=edit_id, task=task, what="rollout", history=[decision.change], writes={
                "rollout.json": decision.next_policy.split().model_dump_json(indent=2),
                POLICY_FILE: decision.next_policy.model_dump_json(indent=2)})
        assert decision.winner is not None  # an ending decision names its winner
        moved = self.aliases.move(task, DEFAULT_ALIAS, decision.winner, decision.change.actor,
                                           decision.change.reason)
        return Edit(id=edit_id, task=task, what="rollout", writes=moved.writes if moved else {},
                    removes=["rollout.json", POLICY_FILE], history=[*(moved.history if moved else []), decision.change])


def _split_entry(spec: RolloutSpec, actor: str, reason: str) -> HistoryEntry:
    split = {variant.name: f"{variant.version}={variant.weight:g}" for variant in spec.variants}
    return HistoryEntry(actor=actor, action="rollout", reason=reason, details=split)
