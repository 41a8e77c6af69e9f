"""A request as the runtime takes it, whatever its endpoint (`Call`), and which version and
variant serve it (`Assignment`). Torch-free: the HTTP room builds these."""

from dataclasses import dataclass

from promptmux.core.fields import Input
from promptmux.registry import TaskKind
from promptmux.serving.runtime.routing import Route
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.tenants import ADMIN, Caller


@dataclass(frozen=True)
class Query:
    """What a request asks for, whatever its endpoint: a task, its inputs (texts, or for a
    chat-format task conversations), and how to route them."""

    task: str
    inputs: list[Input]
    version: int | None = None
    alias: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class Call:
    """One request to the runtime, whatever its endpoint: the query, the endpoint it came on (for
    the metrics), the kind of task it needs (None: either), the parameters it overrides (and
    what the client calls max_new_tokens), whether it streams, whether its inputs are chat
    conversations (fitted to the task's format), and how many choices each input asks for
    (OpenAI's `n`: the inputs hold each one that many times; choice i of a seeded sampling
    request samples with seed + i)."""

    query: Query
    endpoint: str
    kind: TaskKind | None = None
    params: ParamsOverride | None = None
    tokens_field: str = "max_new_tokens"
    stream: bool = False
    conversation: bool = False
    choices: int = 1
    caller: Caller = ADMIN


@dataclass(frozen=True)
class Assignment:
    """Which version and rollout variant serve a request, and the automatic rollout (if any)
    whose split put it there: what metrics, served windows and feedback ids are keyed by."""

    task: str
    version: int
    variant: str
    experiment: str | None = None

    @classmethod
    def of(cls, task: str, route: Route) -> "Assignment":
        return cls(task, route.manifest.version, route.variant, route.experiment)
