"""`promptmux registry rollout-status TASK --plot out.png`: each side's score over time.

Top: the running mean score of the control and the candidate since the rollout began,
with its 95% interval, against the time of each outcome. Bottom: the candidate's share of
traffic, stepping as the controller moved it (from the task's history).
"""

from pathlib import Path

from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from promptmux.registry.history import Change
from promptmux.registry.policy import Outcome, RolloutPolicy
from promptmux.registry.sequential import ArmOutcomes


def plot_rollout(task: str, policy: RolloutPolicy, outcomes: list[Outcome], history: list[Change], path: Path) -> None:
    figure = Figure(figsize=(8, 5))  # no pyplot: no backend, no global state
    scores, shares = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ordered = sorted(policy.own(outcomes), key=lambda o: o.at)
    for side, version in (("control", policy.control), ("candidate", policy.candidate)):
        arm, times, means, lows, highs = ArmOutcomes(), [], [], [], []
        for outcome in (o for o in ordered if o.variant == side):
            arm.add(outcome.score)
            low, high = arm.interval()
            times.append(outcome.at)
            means.append(arm.mean)
            lows.append(low)
            highs.append(high)
        line, = scores.plot(times, means, label=f"{side} v{version} ({arm.count} outcomes)")
        scores.fill_between(times, lows, highs, color=line.get_color(), alpha=0.2)
    scores.set_ylabel("mean score (95% interval)")
    scores.set_ylim(0, 1)
    scores.set_title(f"{task}: automatic rollout of v{policy.candidate} against v{policy.control}")
    scores.legend(loc="lower right")
    steps = [(c.at, float(c.details["to"])) for c in history if c.action == "step" and c.at >= policy.started_at]
    times = [policy.started_at] + [at for at, _ in steps] + ([ordered[-1].at] if ordered else [])
    values = [policy.steps[0]] + [share for _, share in steps] + ([policy.share] if ordered else [])
    shares.step(times, values, where="post")
    shares.set_ylabel("candidate share (%)")
    shares.set_ylim(0, 100)
    shares.set_xlabel("time (UTC)")
    shares.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
