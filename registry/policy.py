"""What an automatic rollout is told to do, and what it learns: the policy and the outcomes.

A policy names the control and the candidate version, the candidate's traffic steps, the
outcomes a step needs before the next, and the sequential test that decides. Outcomes are
the feedback clients send for served requests, one immutable file each under
`tasks/<task>/outcomes/`, named by a digest of the request id: the same id sent twice,
to any replica, is one file, and replicas on any number of machines write without
conflicting.
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
