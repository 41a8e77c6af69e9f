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
"""

import hashlib
from datetime import datetime

from pydantic import Field, model_validator

from promptmux.registry.schemas import StrictModel, utc_now
from promptmux.registry.sequential import SequentialTest

DEFAULT_STEPS = [5.0, 25.0, 50.0]


class RolloutPolicy(StrictModel):
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
        return self

    @property
    def share(self) -> float:
        return self.steps[self.step]


class Outcome(StrictModel):
    """One piece of feedback on one served request."""

    id: str = Field(min_length=1, max_length=1024)
    task: str
    version: int = Field(ge=1)
    variant: str
    score: float = Field(ge=0.0, le=1.0)
    label: str | None = Field(None, description="the gold label, for a classification")
    predicted: str | None = Field(None, description="the label the server answered")
    at: datetime = Field(default_factory=utc_now)

    def file_name(self) -> str:
        return f"{hashlib.sha256(self.id.encode()).hexdigest()[:40]}.json"


LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                     30.0, 60.0, 120.0, float("inf"))


class VariantServed(StrictModel):
    """One replica's requests of one version under one variant, in one window."""

    version: int = Field(ge=1)
    variant: str
    requests: int = 0
    errors: int = Field(0, description="requests that failed on the server's side or timed out")
    latency_buckets: list[int] = Field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S),
                                       description="successful requests per latency bucket (LATENCY_BUCKETS_S)")

    def add(self, latency_s: float | None) -> None:
        """One request: its latency when it succeeded, None when it failed."""
        self.requests += 1
        if latency_s is None:
            self.errors += 1
        else:
            self.latency_buckets[next(i for i, bound in enumerate(LATENCY_BUCKETS_S) if latency_s <= bound)] += 1


class ServedWindow(StrictModel):
    """What one replica served of one task between `start` and `end`."""

    replica: str
    start: datetime
    end: datetime = Field(default_factory=utc_now)
    variants: list[VariantServed]

    def file_name(self) -> str:
        return f"{self.start.strftime('%Y%m%dT%H%M%S.%f')}-{hashlib.sha256(self.replica.encode()).hexdigest()[:12]}.json"
