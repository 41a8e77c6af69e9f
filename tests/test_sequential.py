"""The rollout decision rule's error rates, by simulation, checked after every batch.

Pure Python and seeded: 500 experiments each, traffic split 50/50 at random, the rule
consulted after every batch of 10 outcomes, as a controller watching feedback does.
"""

import random

from promptmux.registry.policy import SequentialTest
from promptmux.serving.rollouts.sequential import ArmOutcomes, confidence_radius, decide

EXPERIMENTS = 500
BATCH = 10


def run(test: SequentialTest, control_p: float, candidate_p: float, rng: random.Random) -> tuple[str, int]:
    """One experiment watched continuously: its verdict and the outcomes of its smaller arm."""
    arms = {"control": ArmOutcomes(), "candidate": ArmOutcomes()}
    rates = {"control": control_p, "candidate": candidate_p}
    while True:
        for _ in range(BATCH):
            arm = "candidate" if rng.random() < 0.5 else "control"
            arms[arm].add(1.0 if rng.random() < rates[arm] else 0.0)
        decision = decide(test, arms["control"], arms["candidate"])
        if decision.verdict != "continue":
            return decision.verdict, min(arms["control"].count, arms["candidate"].count)


def verdicts(control_p: float, candidate_p: float, seed: int) -> tuple[dict[str, int], list[int]]:
    rng, test = random.Random(seed), SequentialTest()
    counts: dict[str, int] = {"promote": 0, "rollback": 0, "no_difference": 0}
    samples = []
    for _ in range(EXPERIMENTS):
        verdict, taken = run(test, control_p, candidate_p, rng)
        counts[verdict] += 1
        samples.append(taken)
    return counts, samples


def test_a_a_with_continuous_monitoring_wrongly_promotes_at_most_5_percent() -> None:
    counts, samples = verdicts(0.7, 0.7, seed=1)
    assert counts["promote"] <= 0.05 * EXPERIMENTS, counts
    assert counts["promote"] + counts["rollback"] <= 0.05 * EXPERIMENTS, counts  # any wrong decision, both ways
    assert max(samples) <= SequentialTest().max_samples + BATCH  # it always stops


def test_a_ten_point_lift_is_promoted_in_80_percent_within_the_stated_sample_size() -> None:
    test = SequentialTest()
    counts, samples = verdicts(0.7, 0.8, seed=2)
    assert counts["promote"] >= 0.8 * EXPERIMENTS, counts
    assert counts["rollback"] == 0
    promoted_by = sorted(samples)[int(0.8 * EXPERIMENTS)]  # outcomes per variant by which 80% were promoted
    assert promoted_by <= test.max_samples


def test_a_worse_candidate_is_rolled_back() -> None:
    counts, _ = verdicts(0.8, 0.7, seed=3)
    assert counts["rollback"] >= 0.8 * EXPERIMENTS and counts["promote"] == 0, counts


def test_peeking_at_a_fixed_horizon_test_would_fail_the_same_a_a_check() -> None:
    """The simulation can tell a rule that is not valid under monitoring: a plain z-test at
    5%, checked after every batch, wrongly decides far more often than 5%."""
    rng = random.Random(4)
    wrong = 0
    for _ in range(EXPERIMENTS):
        arms = [ArmOutcomes(), ArmOutcomes()]
        for _ in range(200):
            for _ in range(BATCH):
                arms[rng.random() < 0.5].add(1.0 if rng.random() < 0.7 else 0.0)
            if min(a.count for a in arms) >= 30:
                se = (arms[0].variance / arms[0].count + arms[1].variance / arms[1].count) ** 0.5
                if abs(arms[1].mean - arms[0].mean) / se > 1.96:
                    wrong += 1
                    break
    assert wrong > 0.15 * EXPERIMENTS


def test_the_confidence_sequence_leaves_zero_exactly_when_the_test_decides() -> None:
    """The console draws the difference with its always-valid band (`confidence_radius`): the
    band excludes 0 on exactly the looks where the test reaches a verdict."""
    test, rng = SequentialTest(min_samples=2, max_samples=10**6), random.Random(5)
    decided = undecided = 0
    for _ in range(300):
        control, candidate = ArmOutcomes(), ArmOutcomes()
        for _ in range(rng.randint(2, 400)):
            control.add(float(rng.random() < 0.5))
            candidate.add(float(rng.random() < rng.choice((0.5, 0.8))))
        verdict = decide(test, control, candidate)
        excludes_zero = abs(verdict.difference) > confidence_radius(test, control, candidate)
        assert excludes_zero == (verdict.verdict != "continue")
        decided += excludes_zero
        undecided += not excludes_zero
    assert decided > 20 and undecided > 20  # both sides of the boundary were tried
