"""`promptmux registry rollout-status TASK --plot out.png`: each side's score over time.

Top: the running mean score of the control and the candidate, with its 95% interval,
against the time of each outcome. Bottom: the candidate's share of traffic, stepping as
the controller moved it (its step decisions). The time axis spans the outcomes and the
decisions, and an ended rollout's decision is marked where it was made.
"""

from pathlib import Path

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from promptmux.registry.policy import Outcome
from promptmux.serving.rollouts.review import RolloutReview
from promptmux.serving.rollouts.sequential import ArmOutcomes


def plotted(rollout: RolloutReview, outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes the plot draws, in time order: the experiment's own, and once it has ended
    only those up to its end, which the decision (and the table) counted; feedback that
    arrives later is not part of it."""
    end = rollout.ended_at
    return sorted((o for o in rollout.policy.own(outcomes) if end is None or o.at <= end), key=lambda o: o.at)


def plot_rollout(task: str, rollout: RolloutReview, outcomes: list[Outcome], path: Path) -> None:
    policy = rollout.policy
    figure = Figure(figsize=(9, 5.5), layout="constrained")  # no pyplot: no backend, no global state
    scores, shares = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ordered = plotted(rollout, outcomes)
    for side, version in (("control", policy.control), ("candidate", policy.candidate)):
        arm, times, means, lows, highs = ArmOutcomes(), [], [], [], []
        for outcome in (o for o in ordered if o.variant == side):
            arm.add(outcome.score)
            low, high = arm.interval()
            times.append(outcome.at)
            means.append(arm.mean)
            lows.append(low)
            highs.append(high)
        line, = scores.plot(times, means, marker="." if len(times) < 30 else None,
                            label=f"{side} v{version} ({arm.count} outcomes)")
        scores.fill_between(times, lows, highs, color=line.get_color(), alpha=0.2)
    moves = [(step.change.at, float(step.change.details["to"])) for step in rollout.steps]
    end = rollout.ended_at
    span = [o.at for o in ordered] + [at for at, _ in moves] + ([end] if end else [])
    first, last = (min(span), max(span)) if span else (policy.started_at, policy.started_at)
    times = [first] + [at for at, _ in moves] + [last]
    values = [policy.steps[0]] + [share for _, share in moves] + [moves[-1][1] if moves else policy.steps[0]]
    shares.step(times, values, where="post", color="tab:green")
    if end is not None:
        for axes in (scores, shares):
            axes.axvline(end, color="black", linestyle="--", linewidth=1)
        scores.plot([], [], color="black", linestyle="--", label=f"{rollout.status}: production → v{rollout.decision.winner}")
    if first < last:
        margin = (last - first) * 0.02
        scores.set_xlim(first - margin, last + margin)
    scores.set_ylabel("mean score (95% interval)")
    scores.set_ylim(0, 1.02)
    scores.set_title(f"{task}: automatic rollout of v{policy.candidate} against v{policy.control} ({policy.experiment})")
    shares.set_ylabel("candidate share (%)")
    shares.set_ylim(0, 100)
    shares.set_xlabel("time (UTC)")
    locator = AutoDateLocator()
    shares.xaxis.set_major_locator(locator)
    shares.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    figure.legend(loc="outside lower center", ncols=3)  # below the axes: it never covers a curve
    figure.savefig(path, dpi=100)
