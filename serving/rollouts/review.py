"""One automatic rollout, running or ended, as `promptmux registry rollout-status` reviews it.

A running rollout is shown from its live policy and outcomes; an ended one from what was
recorded when it ended (its decision and the statistics the decision was made on), so a
review after the fact shows what the controller saw, not a recount.
"""

from dataclasses import dataclass, field
from datetime import datetime

from promptmux.registry.policy import RolloutDecision, RolloutPolicy
from promptmux.registry.registry import Registry
from promptmux.serving.rollouts.loop import Experiment, OutcomeLog


@dataclass(frozen=True)
class RolloutReview:
    """One automatic rollout, running or ended, as `rollout-status` shows it: the policy as it
    stands (or stood at its last step), and the figures: the live ones while it runs, the
    ones its ending decision was made on after that."""

    policy: RolloutPolicy
    status: str = "running"  # running, promote, rollback, or stopped (by hand: no decision)
    figures: dict = field(default_factory=dict)
    decision: RolloutDecision | None = None
    steps: list[RolloutDecision] = field(default_factory=list)  # the decisions that moved it a step

    @property
    def ended_at(self) -> datetime | None:
        return self.decision.change.at if self.decision else None

    @property
    def reason(self) -> str | None:
        return self.decision.change.reason if self.decision else None

    def headline(self) -> str:
        policy = self.policy
        if self.status == "running":
            return f"running: step {policy.step + 1} of {len(policy.steps)}, candidate at {policy.share:g}%"
        if self.decision is None:
            return f"stopped by hand at step {policy.step + 1} of {len(policy.steps)} (no decision recorded)"
        return (f"ended {self.decision.change.at:%Y-%m-%d %H:%M:%S} UTC: {self.status}, production → "
                f"v{self.decision.winner} ({self.reason})")


def review(registry: Registry, started: RolloutPolicy, log: OutcomeLog) -> RolloutReview:
    """The rollout that began as `started`: from the live policy while it runs, else from its
    recorded decisions (the last step's policy, and the end with its statistics). The
    outcomes are read only for figures no decision recorded."""
    task = log.task
    decisions = registry.rollouts.decisions(task, started.experiment)
    steps = [d for d in decisions if d.next_policy is not None]
    current = registry.rollouts.policy(task)
    if current is not None and current.experiment == started.experiment:
        return RolloutReview(current, "running", Experiment.of(current, log.read(), log.read_served()).snapshot(),
                             steps=steps)
    policy = steps[-1].next_policy if steps and steps[-1].next_policy else started
    end = next((d for d in decisions if d.winner is not None), None)
    if end is not None and end.change.stats:
        return RolloutReview(policy, end.change.action, end.change.stats, end, steps)
    return RolloutReview(policy, "stopped", Experiment.of(policy, log.read(), log.read_served()).snapshot(), steps=steps)
