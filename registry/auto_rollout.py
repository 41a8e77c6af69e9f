"""The closed loop of an automatic rollout: read the outcomes, decide, act, write it down.

`advance` is one look at one task. The sequential test (`sequential.SequentialTest`)
compares the candidate's outcomes with the control's since the rollout started:
* worse, or no better after `max_samples` outcomes each: roll back (`production` stays
  or returns to the control), and the rollout ends;
* better: promote (`production` moves to the candidate), and the rollout ends;
* not yet decided: once the candidate has `min_samples_per_step` outcomes at its
  current step, its share moves to the next step.
Every decision is appended to the task's history with the statistics it was made on.
Outcome files are immutable, so an `OutcomeLog` reads each one once.
"""

from dataclasses import dataclass, field

from promptmux.registry.history import Change
from promptmux.registry.policy import Outcome, RolloutPolicy
from promptmux.registry.registry import Registry
from promptmux.registry.schemas import utc_now
from promptmux.registry.sequential import ArmOutcomes, Decision

CONTROLLER = "controller"


@dataclass
class OutcomeLog:
    """A task's outcomes, read incrementally: only files not seen before are read."""

    registry: Registry
    task: str
    seen: dict[str, Outcome] = field(default_factory=dict)

    def read(self) -> list[Outcome]:
        for name in self.registry.outcome_files(self.task):
            if name not in self.seen:
                self.seen[name] = self.registry.read_outcome(self.task, name)
        return list(self.seen.values())


@dataclass(frozen=True)
class Experiment:
    """The state of an automatic rollout: each side's outcomes, and what the test says."""

    policy: RolloutPolicy
    control: ArmOutcomes
    candidate: ArmOutcomes
    candidate_at_step: int
    decision: Decision

    @classmethod
    def of(cls, policy: RolloutPolicy, outcomes: list[Outcome]) -> "Experiment":
        arms = {policy.control: ArmOutcomes(), policy.candidate: ArmOutcomes()}
        at_step = 0
        for outcome in sorted(outcomes, key=lambda o: o.at):
            if outcome.version in arms and outcome.at >= policy.started_at:
                arms[outcome.version].add(outcome.score)
                at_step += outcome.version == policy.candidate and outcome.at >= policy.step_started_at
        control, candidate = arms[policy.control], arms[policy.candidate]
        return cls(policy, control, candidate, at_step, policy.test.decide(control, candidate))

    def snapshot(self) -> dict:
        """The figures a decision is recorded with."""
        def arm(outcomes: ArmOutcomes) -> dict:
            low, high = outcomes.interval()
            return {"outcomes": outcomes.count, "mean": round(outcomes.mean, 4), "interval": [round(low, 4), round(high, 4)]}

        return {"control": {"version": self.policy.control, **arm(self.control)},
                "candidate": {"version": self.policy.candidate, **arm(self.candidate)},
                "share": self.policy.share, "step": self.policy.step, "verdict": self.decision.verdict,
                "p_value": round(self.decision.p_value, 6), "difference": round(self.decision.difference, 4)}


def advance(registry: Registry, log: OutcomeLog) -> Change | None:
    """Look at one task's automatic rollout once and act on it; the change made, if any."""
    policy = registry.auto_rollout(log.task)
    if policy is None:
        return None
    experiment = Experiment.of(policy, log.read())
    verdict = experiment.decision.verdict
    if verdict in ("promote", "rollback", "no_difference"):
        action = "promote" if verdict == "promote" else "rollback"
        winner = policy.candidate if action == "promote" else policy.control
        reason = {"promote": "the candidate is better", "rollback": "the candidate is worse",
                  "no_difference": f"no difference after {policy.test.max_samples} outcomes each; the control stays"}[verdict]
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
