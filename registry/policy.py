"""What an automatic rollout is told to do, and what it learns: the policy and the outcomes.

A policy names the control and the candidate version, the candidate's traffic steps, the
outcomes a step needs before the next, the sequential test that decides, and the guard
rails that roll a candidate back whatever its outcomes: its error rate, and its p99
latency against the control's. Outcomes are the feedback clients send for served
requests, one immutable file each under `tasks/<task>/outcomes/`, named by a digest of
the request id: the same id sent twice, to any replica, is one file, and replicas on any
number of machines write without conflicting. The guard rails read what the replicas
served: each replica appends, while a task has a rollout, one immutable window of its
per-variant requests, errors and latencies under `tasks/<task>/serving/`.

An experiment counts only its own traffic. It has an id (`RolloutPolicy.experiment`),
which its split carries (`RolloutSpec.experiment`); the router stamps every request the
split assigns with that id and the variant, inside the request's signed feedback id, and
only outcomes and served requests carrying this experiment's id decide. Requests pinned to
a version or an alias, other experiments' requests and answers issued before it began are
stored like any other, but never decide.
"""

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from promptmux.core.clock import utc_now
from promptmux.core.strict_model import StrictModel, exactly_one
from promptmux.registry.history import HistoryEntry
from promptmux.registry.schemas import RolloutSpec, RolloutVariant

DEFAULT_STEPS = [5.0, 25.0, 50.0]


class SequentialTest(StrictModel):
    """The parameters of the sequential test that decides (the statistics: `serving/rollouts/sequential.py`)."""

    alpha: float = Field(0.05, gt=0, lt=1, description="chance of any wrong decision when the versions are equal")
    tau: float = Field(0.1, gt=0, description="the size of difference the test is tuned to find")
    min_samples: int = Field(30, ge=2, description="outcomes per variant before any decision")
    max_samples: int = Field(1000, ge=2, description="outcomes per variant after which the control stays")


class RolloutPolicy(StrictModel):
    experiment: str = Field("", pattern=r"^([a-z0-9][a-z0-9._-]{0,63})?$", description="the experiment's id, stamped "
                            "on every request its split routes; only outcomes carrying it decide (default: from started_at)")
    control: int = Field(ge=1)
    candidate: int = Field(ge=1)
    steps: list[float] = Field(default_factory=lambda: list(DEFAULT_STEPS), min_length=1,
                               description="the candidate's share of traffic at each step, in percent")
    min_samples_per_step: int = Field(30, ge=1, description="candidate outcomes at a step before the next")
    test: SequentialTest = Field(default_factory=SequentialTest)
    max_error_rate: float = Field(0.05, ge=0, le=1, description="guard rail: the candidate's share of failed requests")
    max_p99_latency_ratio: float = Field(2.0, gt=0, description="guard rail: candidate p99 latency / the control's")
    guard_min_requests: int = Field(50, ge=1, description="requests per version before the guard rails apply")
    latency_floor_s: float = Field(0.1, ge=0, description="p99 latencies below this count as this much: jitter "
                                   "between two fast versions is not a regression")
    step: int = Field(0, ge=0)
    started_at: datetime = Field(default_factory=utc_now)
    step_started_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _sound(self) -> "RolloutPolicy":
        if self.control == self.candidate:
            raise ValueError("the control and the candidate must be different versions")
        if any(not 0 < share < 100 for share in self.steps) or self.steps != sorted(self.steps):
            raise ValueError("steps are rising candidate shares between 0 and 100 percent, e.g. 5,25,50")
        if self.step >= len(self.steps):
            raise ValueError(f"step {self.step} is past the last of {len(self.steps)} steps")
        if not self.experiment:  # stable for a policy written before experiments had ids
            self.experiment = f"x{self.started_at.strftime('%Y%m%d-%H%M%S%f')}"
        return self

    @property
    def share(self) -> float:
        return self.steps[self.step]

    def own(self, outcomes: "list[Outcome]") -> "list[Outcome]":
        """The outcomes of requests this experiment's split routed: its id, a side's name and version."""
        versions = {"control": self.control, "candidate": self.candidate}
        return [o for o in outcomes if o.experiment == self.experiment and versions.get(o.variant) == o.version]

    def split(self) -> RolloutSpec:
        """The traffic split of the current step, carrying the experiment's id."""
        return RolloutSpec(experiment=self.experiment, variants=[
            RolloutVariant(version=self.control, weight=100 - self.share, name="control"),
            RolloutVariant(version=self.candidate, weight=self.share, name="candidate")])


class RolloutDecision(StrictModel):
    """What the controller decided at one step of one experiment, written as one create-only
    record (`tasks/<task>/decisions/<experiment>-<step or end>.json`) before anything acts on
    it: a controller that dies half-way leaves it to be applied, never decided again, and two
    controllers cannot decide one step twice."""

    experiment: str
    step: int = Field(ge=0, description="the policy step it was made at")
    change: HistoryEntry = Field(description="the history entry: action, reason, the statistics it was made on")
    next_policy: RolloutPolicy | None = Field(None, description="a step: the policy of the next step")
    winner: int | None = Field(None, ge=1, description="an end: the version `production` moves to")

    def file_name(self) -> str:
        return f"{self.experiment}-{'end' if self.winner is not None else f'step{self.step}'}.json"

    @model_validator(mode="after")
    def _one_outcome(self) -> "RolloutDecision":
        exactly_one(self.next_policy, self.winner, "a decision either moves to the next step or ends with a winner")
        return self


class Outcome(StrictModel):
    """One piece of feedback on one served request."""

    id: str = Field(min_length=1, max_length=1024)
    task: str
    version: int = Field(ge=1)
    variant: str
    experiment: str | None = Field(None, description="the automatic rollout that routed the request, if one did")
    score: float = Field(ge=0.0, le=1.0)
    label: str | None = Field(None, description="the gold label, for a classification")
    predicted: str | None = Field(None, description="the label the server answered")
    at: datetime = Field(default_factory=utc_now)

    def file_name(self) -> str:
        return f"{hashlib.sha256(self.id.encode()).hexdigest()[:40]}.json"


LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                     30.0, 60.0, 120.0, float("inf"))


Result = Literal["ok", "error", "timeout", "cancelled"]


class ServedCounts(StrictModel):
    """Requests served and how they ended: one variant's in one replica's window, or a side's
    summed over every window of an experiment."""

    requests: int = 0
    errors: int = Field(0, description="requests that failed on the server's side (or for their version), or timed out")
    cancelled: int = Field(0, description="requests whose client went away first")
    latency_buckets: list[int] = Field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S),
                                       description="successful requests per latency bucket (LATENCY_BUCKETS_S)")

    def add(self, result: Result, latency_s: float = 0.0) -> None:
        """One request, with its result (and its latency when it succeeded)."""
        self.requests += 1
        if result in ("error", "timeout"):
            self.errors += 1
        elif result == "cancelled":
            self.cancelled += 1
        else:
            self.latency_buckets[next(i for i, bound in enumerate(LATENCY_BUCKETS_S) if latency_s <= bound)] += 1

    def merge(self, other: "ServedCounts") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cancelled += other.cancelled
        self.latency_buckets = [a + b for a, b in zip(self.latency_buckets, other.latency_buckets)]

    @property
    def error_rate(self) -> float:
        """Failed requests over those that ended (a client that went away ended nothing)."""
        ended = self.requests - self.cancelled
        return self.errors / ended if ended else 0.0

    @property
    def p99_s(self) -> float:
        """The upper bound of the latency bucket that holds the 99th percentile."""
        target, running = 0.99 * sum(self.latency_buckets), 0
        for bound, count in zip(LATENCY_BUCKETS_S, self.latency_buckets):
            running += count
            if count and running >= target:
                return bound
        return 0.0


class VariantServed(ServedCounts):
    """One replica's requests of one version under one variant, in one window."""

    version: int = Field(ge=1)
    variant: str
    experiment: str | None = Field(None, description="the automatic rollout that routed these requests, if one did")


class ServedWindow(StrictModel):
    """What one replica served of one task between `start` and `end`."""

    replica: str
    start: datetime
    end: datetime = Field(default_factory=utc_now)
    variants: list[VariantServed]

    def file_name(self) -> str:
        return f"{self.start.strftime('%Y%m%dT%H%M%S.%f')}-{hashlib.sha256(self.replica.encode()).hexdigest()[:12]}.json"
