"""The closed loop of an automatic rollout: read the outcomes, decide, act, write it down.

`advance` is one look at one task. First the guard rails, on what the replicas served
since the rollout started: a candidate whose error rate or p99 latency (against the
control's) breaks the policy's limits is rolled back at once. Then the sequential test
(`sequential.SequentialTest`) compares the candidate's outcomes with the control's:
* worse, or no better after `max_samples` outcomes each: roll back (`production` stays
  or returns to the control), and the rollout ends;
* better: promote (`production` moves to the candidate), and the rollout ends;
* not yet decided: once the candidate has `min_samples_per_step` outcomes at its
  current step, its share moves to the next step.
Every decision is appended to the task's history with the statistics it was made on.
Outcome and served-window files are immutable, so an `OutcomeLog` reads each one once.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from promptmux.registry.history import Change
from promptmux.registry.policy import LATENCY_BUCKETS_S, Outcome, RolloutPolicy, ServedWindow, VariantServed
from promptmux.registry.registry import Registry
from promptmux.registry.schemas import utc_now
from promptmux.registry.sequential import ArmOutcomes, Decision

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
        return self._with_new_files(self.seen, "outcomes", self.registry.read_outcome)

    def read_served(self) -> list[ServedWindow]:
        return self._with_new_files(self.windows, "serving", self.registry.read_served)

    def _with_new_files(self, known: dict[str, FileT], kind: str, read: Callable[[str, str], FileT]) -> list[FileT]:
        """`known` after reading the task's files of `kind` it does not hold yet."""
        for name in self.registry.outcome_files(self.task, kind):
            if name not in known:
                known[name] = read(self.task, name)
        return list(known.values())


@dataclass
class Served:
    """What the replicas served of one side of an experiment, summed over their windows."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))

    def add(self, served: VariantServed) -> None:
        self.requests += served.requests
        self.errors += served.errors
        self.buckets = [a + b for a, b in zip(self.buckets, served.latency_buckets)]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_s(self) -> float:
        """The upper bound of the latency bucket that holds the 99th percentile."""
        target, running = 0.99 * sum(self.buckets), 0
        for bound, count in zip(LATENCY_BUCKETS_S, self.buckets):
            running += count
            if count and running >= target:
                return bound
        return 0.0


def served_sides(policy: RolloutPolicy, windows: list[ServedWindow]) -> dict[str, Served]:
    sides = {"control": Served(), "candidate": Served()}
    versions = {"control": policy.control, "candidate": policy.candidate}
    for window in windows:
        if window.start >= policy.started_at:
            for served in window.variants:
                if served.variant in sides and served.version == versions[served.variant]:
                    sides[served.variant].add(served)
    return sides


@dataclass(frozen=True)
class Experiment:
    """The state of an automatic rollout: each side's outcomes, and what the test says."""

    policy: RolloutPolicy
    control: ArmOutcomes
    candidate: ArmOutcomes
    candidate_at_step: int
    decision: Decision
    served: dict[str, Served] = field(default_factory=dict)

    @classmethod
    def of(cls, policy: RolloutPolicy, outcomes: list[Outcome], windows: list[ServedWindow] | None = None) -> "Experiment":
        arms = {policy.control: ArmOutcomes(), policy.candidate: ArmOutcomes()}
        at_step = 0
        for outcome in sorted(outcomes, key=lambda o: o.at):
            if outcome.version in arms and outcome.at >= policy.started_at:
                arms[outcome.version].add(outcome.score)
                at_step += outcome.version == policy.candidate and outcome.at >= policy.step_started_at
        control, candidate = arms[policy.control], arms[policy.candidate]
        return cls(policy, control, candidate, at_step, policy.test.decide(control, candidate),
                   served_sides(policy, windows or []))

    def guard_breach(self) -> str | None:
        """Which guard rail the candidate breaks, in words, or None."""
        policy, control, candidate = self.policy, self.served["control"], self.served["candidate"]
        if candidate.requests < policy.guard_min_requests:
            return None
        if candidate.error_rate > policy.max_error_rate:
            return f"guard rail: candidate error rate {candidate.error_rate:.1%} > {policy.max_error_rate:.1%}"
        if control.requests >= policy.guard_min_requests:
            ratio = max(candidate.p99_s, policy.latency_floor_s) / max(control.p99_s, policy.latency_floor_s, 1e-9)
            if ratio > policy.max_p99_latency_ratio:
                return f"guard rail: candidate p99 latency {ratio:.1f}x the control's > {policy.max_p99_latency_ratio:g}x"
        return None

    def snapshot(self) -> dict:
        """The figures a decision is recorded with."""
        def arm(outcomes: ArmOutcomes, served: Served) -> dict:
            low, high = outcomes.interval()
            return {"outcomes": outcomes.count, "mean": round(outcomes.mean, 4), "interval": [round(low, 4), round(high, 4)],
                    "requests": served.requests, "error_rate": round(served.error_rate, 4), "p99_s": served.p99_s}

        return {"control": {"version": self.policy.control, **arm(self.control, self.served["control"])},
                "candidate": {"version": self.policy.candidate, **arm(self.candidate, self.served["candidate"])},
                "share": self.policy.share, "step": self.policy.step, "verdict": self.decision.verdict,
                "p_value": round(self.decision.p_value, 6), "difference": round(self.decision.difference, 4)}


def advance(registry: Registry, log: OutcomeLog) -> Change | None:
    """Look at one task's automatic rollout once and act on it; the change made, if any."""
    policy = registry.auto_rollout(log.task)
    if policy is None:
        return None
    experiment = Experiment.of(policy, log.read(), log.read_served())
    verdict, breach = experiment.decision.verdict, experiment.guard_breach()
    if breach or verdict in ("promote", "rollback", "no_difference"):
        action = "promote" if verdict == "promote" and not breach else "rollback"
        winner = policy.candidate if action == "promote" else policy.control
        reason = breach or {"promote": "the candidate is better", "rollback": "the candidate is worse",
                            "no_difference": f"no difference after {policy.test.max_samples} outcomes each; "
                            "the control stays"}[verdict]
        change = Change(actor=CONTROLLER, action=action, reason=reason, stats=experiment.snapshot(),
                        details={"control": policy.control, "candidate": policy.candidate, "production": winner})
        registry.end_auto_rollout(log.task, winner, CONTROLLER, reason)
        registry.record_change(log.task, change)
        return change
    if experiment.candidate_at_step < policy.min_samples_per_step or policy.step + 1 >= len(policy.steps):
        return None
    moved = policy.model_copy(update={"step": policy.step + 1, "step_started_at": utc_now()})
    reason = f"{experiment.candidate_at_step} candidate outcomes at {policy.share:g}% and not worse"
    registry.set_auto_rollout(log.task, moved, CONTROLLER, reason)
    change = Change(actor=CONTROLLER, action="step", reason=reason, stats=experiment.snapshot(),
                    details={"from": policy.share, "to": moved.share})
    registry.record_change(log.task, change)
    return change
