"""Sequential A/B statistics that stay valid however often they are looked at.

A rollout is watched continuously: its controller checks after every batch of feedback.
A fixed-horizon test checked that way promotes a candidate that is no better far more
often than its nominal 5%. The mixture sequential probability ratio test (mSPRT; Johari,
Koomen, Pekelis and Walsh, "Peeking at A/B tests", KDD 2017) does not: its likelihood
ratio against "no difference", mixed over a normal prior N(0, tau²) on the difference,
is a martingale under the null, so the chance it ever exceeds 1/alpha is at most alpha.

Outcomes are scores in [0, 1] (a classification's correctness is 0 or 1). The difference
of the two means is tested with the normal approximation, each arm's variance estimated
from its own outcomes. A decision needs `min_samples` outcomes in each arm; at
`max_samples` in each arm without a decision the test stops with "no difference" (the
control stays). The test's parameters (`SequentialTest`) are part of a stored
policy (`registry/policy.py`); `tests/test_sequential.py` measures the error rates by simulation.
"""

import math
from dataclasses import dataclass
from typing import Literal

from promptmux.core.strict_model import StrictModel
from promptmux.registry.policy import SequentialTest

Verdict = Literal["continue", "promote", "rollback", "no_difference"]
VARIANCE_FLOOR = 1e-4  # all outcomes equal so far: keep the test from dividing by zero


class ArmOutcomes(StrictModel):
    """Running sums of one variant's outcomes: enough for its mean and variance."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, score: float) -> None:
        self.count += 1
        self.total += score
        self.total_sq += score * score

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        if self.count < 2:
            return 0.25  # the largest a [0, 1] score can have
        return max((self.total_sq - self.count * self.mean**2) / (self.count - 1), VARIANCE_FLOOR)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """A normal-approximation confidence interval of the mean (fixed-horizon, for display)."""
        if not self.count:
            return 0.0, 1.0
        half = z * math.sqrt(self.variance / self.count)
        return max(0.0, self.mean - half), min(1.0, self.mean + half)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    p_value: float  # 1 / the likelihood ratio now; its running minimum is the always-valid p-value
    difference: float  # candidate mean - control mean


def likelihood_ratio(test: SequentialTest, control: ArmOutcomes, candidate: ArmOutcomes) -> float:
    """The mSPRT mixture likelihood ratio of "the means differ" against "they are equal"."""
    v = control.variance / control.count + candidate.variance / candidate.count
    t2 = test.tau**2
    difference = candidate.mean - control.mean
    log_ratio = 0.5 * math.log(v / (v + t2)) + t2 * difference**2 / (2 * v * (v + t2))
    return math.exp(min(log_ratio, 700.0))


def confidence_radius(test: SequentialTest, control: ArmOutcomes, candidate: ArmOutcomes) -> float:
    """The half-width of the always-valid confidence sequence of the difference (the same
    mixture, inverted): the test decides exactly when |difference| reaches it, so the band
    difference ± radius leaving 0 is the decision boundary crossed."""
    v = control.variance / control.count + candidate.variance / candidate.count
    t2 = test.tau**2
    return math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / test.alpha) + 0.5 * math.log((v + t2) / v)))


def decide(test: SequentialTest, control: ArmOutcomes, candidate: ArmOutcomes) -> Decision:
    """What the test says now: continue, or a verdict once each arm has `min_samples` outcomes."""
    if min(control.count, candidate.count) < test.min_samples:
        return Decision("continue", 1.0, candidate.mean - control.mean)
    ratio = likelihood_ratio(test, control, candidate)
    difference = candidate.mean - control.mean
    p_value = min(1.0, 1 / ratio)
    if ratio >= 1 / test.alpha:
        return Decision("promote" if difference > 0 else "rollback", p_value, difference)
    if min(control.count, candidate.count) >= test.max_samples:
        return Decision("no_difference", p_value, difference)
    return Decision("continue", p_value, difference)
