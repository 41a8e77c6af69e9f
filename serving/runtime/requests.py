"""From a routed task-level input to an engine row: template, tokenize, resolve params."""

from dataclasses import dataclass

from promptmux.core.fields import GenerationParams, Message
from promptmux.registry import TaskKind, TaskSpec
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.prompt_cache import CachedPrompt
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.routing import Route
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.tenants import ADMIN, Caller

Input = str | list[Message]  # a text, or a conversation (chat-format tasks)


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


@dataclass
class Prepared:
    assignment: Assignment
    kind: TaskKind
    row: GenerationRow | ClassificationRow

    @property
    def task(self) -> str:
        return self.assignment.task

    @property
    def version(self) -> int:
        return self.assignment.version

    @property
    def variant(self) -> str:
        return self.assignment.variant


def prepare(
    engine: Engine, spec: TaskSpec, route: Route, prompt: CachedPrompt, inputs: list[Input],
    params: ParamsOverride | None = None, tokens_field: str = "max_new_tokens",
) -> list[Prepared]:
    """Everything that can fail for a request's inputs fails here, before they join a batch:
    the template (or the chat template), tokenization, the verbalizers, the parameters against the engine's limits,
    and each input against the model's positions (`PositionLimitError`, naming the virtual
    tokens, the input and the new tokens). The verbalizers and parameters are the same for
    every input: done once."""
    if spec.kind is TaskKind.classification:
        row_type: type[GenerationRow] | type[ClassificationRow] = ClassificationRow
        verbalizers = engine.verbalizers(spec.labels)
        per_task: GenerationParams | dict[str, list[int]] = verbalizers
        new, new_field = max(len(ids) for ids in verbalizers.values()), "verbalizer tokens"
    else:
        row_type, per_task = GenerationRow, (params or ParamsOverride()).apply(spec.generation)
        engine.check_params(per_task, tokens_field)
        new, new_field = per_task.max_new_tokens, tokens_field
    assignment, items = Assignment.of(spec.name, route), []
    for request in inputs:
        ids = engine.encode_request(spec, request)
        engine.check_positions(prompt.num_virtual_tokens, len(ids), new, new_field)
        items.append(Prepared(assignment, spec.kind, row_type(prompt, ids, per_task)))
    return items
