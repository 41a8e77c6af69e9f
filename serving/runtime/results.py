"""What the runtime answers a request with, whatever its endpoint: who served it, and each
input's answer (plain) or its pieces as they come (streamed). The HTTP room maps these to its
bodies and never sees the engine's own outputs; log-probabilities come with their tokens'
text already."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from promptmux.core.usage import Usage
from promptmux.registry import TaskKind


@dataclass(frozen=True)
class TokenAlternative:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenChoice:
    """A generated token, its log-probability under the model, and the likeliest alternatives."""

    token: str
    logprob: float
    top: list[TokenAlternative]


@dataclass(frozen=True)
class ServedBy:
    """The task, version and rollout variant that served a request (all its inputs)."""

    task: str
    version: int
    variant: str
    kind: TaskKind


@dataclass(frozen=True)
class Answer:
    """One input's whole answer: a generation's text, or a classification's label (as its text
    too) and probabilities. `id` is the signed feedback id."""

    index: int
    id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    label: str | None = None
    probabilities: dict[str, float] | None = None
    logprobs: list[TokenChoice] | None = None


@dataclass(frozen=True)
class Answers:
    served: ServedBy
    answers: list[Answer]
    rate_limits: dict[str, str] = field(default_factory=dict)  # the caller's x-ratelimit-* headers

    @property
    def ids(self) -> list[str]:
        return [answer.id for answer in self.answers]


@dataclass(frozen=True)
class Delta:
    """A piece of one input's streamed answer; its last piece has a finish reason and the usage,
    or an error."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: list[TokenChoice] | None = None  # of `token_ids`, when the request asked for them
    error: str | None = None


@dataclass(frozen=True)
class AnswerStream:
    """A streamed request: every input is submitted already (overload and limits were refused
    before this exists); iterating yields each input's deltas as they come, and leaving early
    cancels them all."""

    served: ServedBy
    ids: list[str]
    deltas: AsyncIterator[Delta]
    rate_limits: dict[str, str] = field(default_factory=dict)  # the caller's x-ratelimit-* headers
