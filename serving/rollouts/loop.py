"""The closed loop of an automatic rollout: read the outcomes, decide, act, write it down.

`advance` is one look at one task. First the guard rails, on what the replicas served
since the rollout started: a candidate whose error rate or p99 latency (against the
control's) breaks the policy's limits is rolled back at once. Then the sequential test
(`sequential.py`) compares the candidate's outcomes with the control's:
* worse, or no better after `max_samples` outcomes each: roll back (`production` stays
  or returns to the control), and the rollout ends;
* better: promote (`production` moves to the candidate), and the rollout ends;
* not yet decided: once the candidate has `min_samples_per_step` outcomes at its
  current step, its share moves to the next step.
Only the experiment's own traffic counts: outcomes and served requests that carry its id
(the router stamps it on every request its split assigns).

A decision is written first, as one create-only record (`RolloutDecision`), and then
applied in one journaled edit (the split and policy, or `production` and the rollout's end,
with the history entry and the statistics it was made on). A controller killed at any point
leaves either no record (the next look decides again, on the same outcomes) or a record
that the next look applies instead of deciding again; the journal finishes an edit left
half-done. So a decision is never lost, never applied twice, and never leaves a split frozen.
Outcome and served-window files are immutable, so an `OutcomeLog` reads each one once.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from promptmux.core.clock import utc_now
from promptmux.core.errors import NotFoundError
from promptmux.registry.history import HistoryEntry
from promptmux.registry.policy import (
    Outcome,
    RolloutDecision,
    RolloutPolicy,
    ServedCounts,
    ServedWindow,
)
from promptmux.registry.registry import Registry
from promptmux.serving.rollouts.sequential import ArmOutcomes, Decision
from promptmux.serving.rollouts.sequential import decide as test_decides

CONTROLLER = "controller"
FileT = TypeVar("FileT", Outcome, ServedWindow)


@dataclass
class OutcomeLog:
    """A task's outcomes and served windows, read incrementally: only new files are read."""

    registry: Registry
    task: str
    seen: dict[str, Outcome] = field(default_factory=dict)
    windows: dict[str, ServedWindow] = field(default_factory=dict)

    def read(self) -> list[Outcome]:
        return self._with_new_files(self.seen, "outcomes", self.registry.outcomes.read)

    def read_served(self) -> list[ServedWindow]:
        return self._with_new_files(self.windows, "serving", self.registry.outcomes.read_served)

    def _with_new_files(self, known: dict[str, FileT], kind: str, read: Callable[[str, str], FileT]) -> list[FileT]:
        """`known` after reading the task's files of `kind` it does not hold yet."""
        for name in self.registry.outcomes.names(self.task, kind):
            if name not in known:
                known[name] = read(self.task, name)
        return list(known.values())


def p99_ratio(policy: RolloutPolicy, candidate_s: float, control_s: float) -> float:
    """The candidate's p99 latency over the control's, each counted as at least the policy's floor."""
    return max(candidate_s, policy.latency_floor_s) / max(control_s, policy.latency_floor_s, 1e-9)


def served_sides(policy: RolloutPolicy, windows: list[ServedWindow]) -> dict[str, ServedCounts]:
    sides = {"control": ServedCounts(), "candidate": ServedCounts()}
    versions = {"control": policy.control, "candidate": policy.candidate}
    for window in windows:
        for served in window.variants:
            if (served.experiment == policy.experiment and served.variant in sides
                    and served.version == versions[served.variant]):
                sides[served.variant].merge(served)
    return sides


@dataclass(frozen=True)
class Experiment:
    """The state of an automatic rollout: each side's outcomes, and what the test says."""

    policy: RolloutPolicy
    control: ArmOutcomes
    candidate: ArmOutcomes
    candidate_at_step: int
    decision: Decision
    served: dict[str, ServedCounts] = field(default_factory=dict)

    @classmethod
    def of(cls, policy: RolloutPolicy, outcomes: list[Outcome], windows: list[ServedWindow] | None = None) -> "Experiment":
        arms = {"control": ArmOutcomes(), "candidate": ArmOutcomes()}
        at_step = 0
        for outcome in sorted(policy.own(outcomes), key=lambda o: o.at):
            arms[outcome.variant].add(outcome.score)
            at_step += outcome.variant == "candidate" and outcome.at >= policy.step_started_at
        control, candidate = arms["control"], arms["candidate"]
        return cls(policy, control, candidate, at_step, test_decides(policy.test, control, candidate),
                   served_sides(policy, windows or []))

    def guard_breach(self) -> str | None:
        """Which guard rail the candidate breaks, in words, or None."""
        policy, control, candidate = self.policy, self.served["control"], self.served["candidate"]
        if candidate.requests < policy.guard_min_requests:
            return None
        if candidate.error_rate > policy.max_error_rate:
            return f"guard rail: candidate error rate {candidate.error_rate:.1%} > {policy.max_error_rate:.1%}"
        if control.requests >= policy.guard_min_requests:
            ratio = p99_ratio(policy, candidate.p99_s, control.p99_s)
            if ratio > policy.max_p99_latency_ratio:
                return f"guard rail: candidate p99 latency {ratio:.1f}x the control's > {policy.max_p99_latency_ratio:g}x"
        return None

    def snapshot(self) -> dict:
        """The figures a decision is recorded with."""
        def arm(outcomes: ArmOutcomes, served: ServedCounts) -> dict:
            low, high = outcomes.interval()
            return {"outcomes": outcomes.count, "mean": round(outcomes.mean, 4), "interval": [round(low, 4), round(high, 4)],
                    "requests": served.requests, "error_rate": round(served.error_rate, 4), "p99_s": served.p99_s}

        return {"control": {"version": self.policy.control, **arm(self.control, self.served["control"])},
                "candidate": {"version": self.policy.candidate, **arm(self.candidate, self.served["candidate"])},
                "share": self.policy.share, "step": self.policy.step, "verdict": self.decision.verdict,
                "p_value": round(self.decision.p_value, 6), "difference": round(self.decision.difference, 4)}


def decide(policy: RolloutPolicy, experiment: Experiment) -> RolloutDecision | None:
    """What the rollout should do now, or None to wait: end (a guard rail broken, or the test
    decided) or move to the next step (enough candidate outcomes at this one)."""
    verdict, breach = experiment.decision.verdict, experiment.guard_breach()
    if breach or verdict in ("promote", "rollback", "no_difference"):
        action = "promote" if verdict == "promote" and not breach else "rollback"
        winner = policy.candidate if action == "promote" else policy.control
        reason = breach or {"promote": "the candidate is better", "rollback": "the candidate is worse",
                            "no_difference": f"no difference after {policy.test.max_samples} outcomes each; "
                            "the control stays"}[verdict]
        change = HistoryEntry(actor=CONTROLLER, action=action, reason=reason, stats=experiment.snapshot(),
                        details={"control": policy.control, "candidate": policy.candidate, "production": winner})
        return RolloutDecision(experiment=policy.experiment, step=policy.step, change=change, winner=winner)
    if experiment.candidate_at_step < policy.min_samples_per_step or policy.step + 1 >= len(policy.steps):
        return None
    moved = policy.model_copy(update={"step": policy.step + 1, "step_started_at": utc_now()})
    reason = f"{experiment.candidate_at_step} candidate outcomes at {policy.share:g}% and not worse"
    change = HistoryEntry(actor=CONTROLLER, action="step", reason=reason, stats=experiment.snapshot(),
                    details={"from": policy.share, "to": moved.share})
    return RolloutDecision(experiment=policy.experiment, step=policy.step, change=change, next_policy=moved)


def end_by_hand(registry: Registry, log: OutcomeLog, action: Literal["promote", "rollback"], actor: str) -> HistoryEntry:
    """End the task's running automatic rollout now, as its controller would: `promote` moves
    `production` to the candidate, `rollback` keeps it on (or returns it to) the control. The
    decision is recorded and applied like the controller's, with the figures it was made on;
    if the controller ended the rollout first, its decision stands and is returned."""
    policy = registry.rollouts.policy(log.task)
    if policy is None:
        raise NotFoundError(f"task {log.task!r} has no automatic rollout running")
    experiment = Experiment.of(policy, log.read(), log.read_served())
    winner = policy.candidate if action == "promote" else policy.control
    change = HistoryEntry(actor=actor, action=action, reason=f"{action} by hand", stats=experiment.snapshot(),
                          details={"control": policy.control, "candidate": policy.candidate, "production": winner})
    decision = registry.rollouts.record_decision(log.task, RolloutDecision(
        experiment=policy.experiment, step=policy.step, change=change, winner=winner))
    registry.rollouts.apply_decision(log.task, decision)
    return decision.change


def advance(registry: Registry, log: OutcomeLog) -> HistoryEntry | None:
    """Look at one task's automatic rollout once and act on it; the change made, if any. A
    decision recorded at the current step and not yet applied is applied, not made again."""
    policy = registry.rollouts.policy(log.task)
    if policy is None:
        return None
    decision = registry.rollouts.decision(log.task, policy)
    if decision is None:
        decision = decide(policy, Experiment.of(policy, log.read(), log.read_served()))
        if decision is None:
            return None
        decision = registry.rollouts.record_decision(log.task, decision)
    registry.rollouts.apply_decision(log.task, decision)
    return decision.change
