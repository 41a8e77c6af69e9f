"""An experiment's course as a series the console draws: after each outcome, the difference
of the candidate's mean over the control's and its always-valid confidence sequence
(`sequential.confidence_radius`), whose band leaving 0 is where the test decides.

An experiment may gather many thousands of outcomes; the series keeps at most
`MAX_POINTS` of them, evenly spaced and always the last, so the chart's JSON stays small
(a few tens of kB) whatever the count.
"""

from promptmux.registry.policy import Outcome, RolloutPolicy
from promptmux.serving.rollouts.sequential import ArmOutcomes, confidence_radius

MAX_POINTS = 400


def difference_series(policy: RolloutPolicy, ordered: list[Outcome]) -> dict[str, list]:
    """`outcomes` (the count so far), `at` (epoch seconds), `difference`, `low` and `high`
    (within [-1, 1], where a difference of scores lies), from the first outcome on which both
    sides have two outcomes each, thinned."""
    arms = {"control": ArmOutcomes(), "candidate": ArmOutcomes()}
    series: dict[str, list] = {"outcomes": [], "at": [], "difference": [], "low": [], "high": []}
    for count, outcome in enumerate(ordered, start=1):
        arms[outcome.variant].add(outcome.score)
        control, candidate = arms["control"], arms["candidate"]
        if min(control.count, candidate.count) < 2:
            continue
        difference = candidate.mean - control.mean
        radius = confidence_radius(policy.test, control, candidate)
        for key, value in (("outcomes", count), ("at", round(outcome.at.timestamp(), 3)),
                           ("difference", round(difference, 4)), ("low", round(max(difference - radius, -1.0), 4)),
                           ("high", round(min(difference + radius, 1.0), 4))):
            series[key].append(value)
    return thinned(series)


def thinned(series: dict[str, list], limit: int = MAX_POINTS) -> dict[str, list]:
    """At most `limit` points of every list, evenly spaced, the last one kept."""
    length = len(next(iter(series.values()), []))
    if length <= limit:
        return series
    keep = sorted({round(i * (length - 1) / (limit - 1)) for i in range(limit)})
    return {key: [values[i] for i in keep] for key, values in series.items()}
