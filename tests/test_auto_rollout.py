"""The automatic rollout's loop on a real registry: outcomes in, steps, promotion or
rollback out, every change in the task's history."""

import json
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from promptmux.core.clock import utc_now
from promptmux.core.errors import ConflictError
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.registry.policy import Outcome, RolloutPolicy, ServedWindow, VariantServed
from promptmux.serving.rollouts.loop import Experiment, OutcomeLog, advance
from promptmux.serving.rollouts.plot import plotted
from promptmux.serving.rollouts.review import review

BASE = "tiny-random-llama"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model(BASE, dtype="float32"))
    registry.tasks.create(TaskSpec(name="reviews", kind="classification", labels={"0": "no", "1": "yes"}, base_model=BASE), fp)
    for _ in range(2):
        registry.versions.register("reviews", torch.randn(4, fp.hidden_size), fp)
    registry.aliases.set("reviews", "production", 1)
    return registry


def feed(registry: Registry, rng: random.Random, rates: dict[int, float], count: int, start: int) -> None:
    """`count` outcomes, each for the variant the current split routes it to, stamped as the router stamps it."""
    rollout = registry.rollouts.get("reviews")
    for i in range(count):
        variant = rng.choices(rollout.variants, [v.weight for v in rollout.variants])[0]
        registry.outcomes.record(Outcome(id=f"req-{start + i}", task="reviews", version=variant.version,
                                        variant=variant.name, experiment=rollout.experiment,
                                        score=float(rng.random() < rates[variant.version])))


def run_loop(registry: Registry, rates: dict[int, float], seed: int) -> list:
    rng, log, changes, fed = random.Random(seed), OutcomeLog(registry, "reviews"), [], 0
    while registry.rollouts.policy("reviews") is not None and fed < 20_000:
        feed(registry, rng, rates, 50, fed)
        fed += 50
        change = advance(registry, log)
        if change is not None:
            changes.append(change)
    return changes


def test_a_better_candidate_climbs_the_steps_and_is_promoted(registry: Registry) -> None:
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2, steps=[5, 25, 50]))
    changes = run_loop(registry, {1: 0.6, 2: 0.8}, seed=0)
    assert [c.action for c in changes][-1] == "promote"
    steps = [c.details["to"] for c in changes if c.action == "step"]
    assert steps and steps == [25, 50][: len(steps)]  # step by step, until the test decides
    assert registry.aliases.of("reviews")["production"] == 2
    assert registry.rollouts.get("reviews") is None and registry.rollouts.policy("reviews") is None
    promoted = changes[-1].stats
    assert promoted["candidate"]["mean"] > promoted["control"]["mean"] and promoted["p_value"] <= 0.05
    history = registry.history("reviews")
    actions = [(c.actor, c.action) for c in history]
    assert ("controller", "promote") in actions and ("controller", "step") in actions
    registered = len(registry.versions.numbers("reviews"))
    assert actions[:registered + 1] == [("manual", "register")] * registered + [("manual", "alias")]  # then production by hand
    assert history == sorted(history, key=lambda c: c.at)


def test_an_ended_rollout_is_reviewed_from_its_decision_and_plotted(cli, registry: Registry, tmp_path: Path) -> None:
    uri = ("--registry", registry.uri)
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2, steps=[5, 25, 50]))
    promoted = run_loop(registry, {1: 0.6, 2: 0.8}, seed=0)[-1]
    registry.rollouts.start("reviews", RolloutPolicy(control=2, candidate=1, steps=[10]))
    registry.rollouts.clear("reviews")  # a second rollout, stopped by hand before any decision

    first = json.loads(cli("registry", "rollout-status", "reviews", "--at", "1", "--json", *uri).out)
    assert first["status"] == "promote" and first["rollout"] == 1 and first["rollouts"] == 2
    assert {side: first[side] for side in ("control", "candidate")} == {side: promoted.stats[side] for side in ("control", "candidate")}
    assert first["p_value"] == promoted.stats["p_value"] and first["reason"] == promoted.reason
    shown = cli("registry", "rollout-status", "reviews", "--at", "1", "--plot", str(png := tmp_path / "ab.png"), *uri)
    assert shown.code == 0 and "automatic rollout 1 of 2" in shown.out and "promote, production → v2" in shown.out
    assert f"wrote {png}" in shown.err and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    late = Outcome(id="late", task="reviews", version=2, variant="candidate", experiment=first["experiment"], score=1.0)
    registry.outcomes.record(late)  # feedback that arrives after the decision
    rollout = review(registry, registry.rollouts.experiments("reviews")[0], log := OutcomeLog(registry, "reviews"))
    drawn = Counter(o.variant for o in plotted(rollout, log.read()))
    assert {side: drawn[side] for side in ("control", "candidate")} == {
        side: first[side]["outcomes"] for side in ("control", "candidate")}  # the plot counts what the table shows
    last = cli("registry", "rollout-status", "reviews", *uri)
    assert "automatic rollout 2 of 2" in last.out and "stopped by hand at step 1 of 1" in last.out
    beyond = cli("registry", "rollout-status", "reviews", "--at", "3", *uri)
    assert beyond.code == 1 and "has had 2 automatic rollout(s)" in beyond.err


def test_a_worse_candidate_is_rolled_back_at_its_first_step(registry: Registry) -> None:
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2, steps=[50]))
    changes = run_loop(registry, {1: 0.8, 2: 0.5}, seed=1)
    assert [c.action for c in changes] == ["rollback"]
    assert changes[0].reason == "the candidate is worse"
    assert registry.aliases.of("reviews")["production"] == 1 and registry.rollouts.get("reviews") is None


def test_feedback_counts_once_per_request_and_only_for_its_own_experiment(registry: Registry) -> None:
    old = Outcome(id="before", task="reviews", version=2, variant="v2", score=0.0, at=utc_now() - timedelta(days=1))
    assert registry.outcomes.record(old)
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2))
    policy = registry.rollouts.policy("reviews")
    outcome = Outcome(id="req-1", task="reviews", version=2, variant="candidate", experiment=policy.experiment, score=1.0)
    assert registry.outcomes.record(outcome) and not registry.outcomes.record(outcome)
    with pytest.raises(ConflictError, match="recorded already, with score 1; the first stands"):
        registry.outcomes.record(outcome.model_copy(update={"score": 0.0}))
    strangers = [  # stored, but none of them decides: no experiment, another experiment, a pinned version
        Outcome(id="pinned", task="reviews", version=2, variant="v2", score=0.0),
        Outcome(id="other", task="reviews", version=2, variant="candidate", experiment="x-earlier", score=0.0),
        Outcome(id="replayed", task="reviews", version=2, variant="candidate", score=0.0),
    ]
    assert all(registry.outcomes.record(o) for o in strangers)
    log = OutcomeLog(registry, "reviews")
    assert len(log.read()) == 5
    assert advance(registry, log) is None  # too few outcomes to decide anything
    experiment = Experiment.of(policy, log.read())
    assert experiment.candidate.count == 1 and experiment.candidate.mean == 1.0 and experiment.control.count == 0


def test_a_manual_split_takes_over_from_the_controller(registry: Registry) -> None:
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2))
    assert registry.rollouts.policy("reviews") is not None
    registry.rollouts.clear("reviews", reason="pausing the experiment")
    assert registry.rollouts.policy("reviews") is None
    assert registry.history("reviews")[-1].reason == "pausing the experiment"


def window(replica: str, served: list[tuple[int, str, int, int, float]], experiment: str | None) -> ServedWindow:
    """A window of (version, variant, ok requests, failed requests, latency of each ok one)."""
    variants = []
    for version, variant, ok, failed, latency in served:
        counts = VariantServed(version=version, variant=variant, experiment=experiment)
        for _ in range(ok):
            counts.add("ok", latency)
        for _ in range(failed):
            counts.add("error")
        variants.append(counts)
    return ServedWindow(replica=replica, start=utc_now(), variants=variants)


@pytest.mark.parametrize("candidate, reason", [
    ((2, "candidate", 40, 10, 0.04), "guard rail: candidate error rate 16.7% > 5.0%"),
    ((2, "candidate", 60, 0, 0.4), "guard rail: candidate p99 latency 5.0x the control's > 2x"),
])
def test_a_candidate_that_breaks_a_guard_rail_is_rolled_back_whatever_its_outcomes(
    registry: Registry, candidate: tuple, reason: str
) -> None:
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2))
    experiment = registry.rollouts.policy("reviews").experiment
    log = OutcomeLog(registry, "reviews")
    registry.outcomes.record_served("reviews", window("a:1", [(1, "control", 30, 0, 0.04), (2, "candidate", 10, 0, 0.04)],
                                             experiment))
    assert advance(registry, log) is None  # too few candidate requests for the guard rails yet
    registry.outcomes.record_served("reviews", window("b:2", [(1, "control", 40, 1, 0.04), candidate], experiment))
    registry.outcomes.record_served("reviews", window("a:1", [(1, "production", 500, 500, 9.0)], None))  # not the experiment's
    registry.outcomes.record_served("reviews", window("a:1", [(2, "candidate", 500, 0, 0.01)], "x-earlier"))  # nor these
    for i in range(40):  # and its outcomes say it is better
        registry.outcomes.record(Outcome(id=f"c{i}", task="reviews", version=2, variant="candidate",
                                        experiment=experiment, score=1.0))
        registry.outcomes.record(Outcome(id=f"k{i}", task="reviews", version=1, variant="control",
                                        experiment=experiment, score=float(i % 2)))
    change = advance(registry, log)
    assert change.action == "rollback" and change.reason == reason
    assert registry.aliases.of("reviews")["production"] == 1 and registry.rollouts.policy("reviews") is None
    assert change.stats["control"]["requests"] == 71 and change.stats["control"]["p99_s"] == 0.05  # counted as 0.1
