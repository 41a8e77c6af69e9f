"""From a routed task-level input to an engine row: template, tokenize, resolve params."""

from dataclasses import dataclass

from promptmux.registry import TaskKind, TaskSpec
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.prompt_cache import CachedPrompt
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.routing import Route
from promptmux.serving.runtime.schemas import ParamsOverride


@dataclass(frozen=True)
class Query:
    """What a request asks for, whatever its endpoint: a task, its inputs, and how to route them."""

    task: str
    texts: list[str]
    version: int | None = None
    alias: str | None = None
    routing_key: str | None = None


@dataclass
class Prepared:
    task: str
    version: int
    variant: str
    kind: TaskKind
    row: GenerationRow | ClassificationRow


def prepare(
    engine: Engine, spec: TaskSpec, route: Route, prompt: CachedPrompt, text: str, params: ParamsOverride | None = None,
    tokens_field: str = "max_new_tokens",
) -> Prepared:
    """Everything that can fail for one input fails here, before it joins a batch: the
    template, tokenization, the verbalizers and the parameters against the engine's limits."""
    ids = engine.encode(spec.render(text))
    if spec.kind is TaskKind.classification:
        row: GenerationRow | ClassificationRow = ClassificationRow(prompt, ids, engine.verbalizers(spec.labels))
    else:
        resolved = (params or ParamsOverride()).apply(spec.generation)
        engine.check_params(resolved, tokens_field)
        row = GenerationRow(prompt, ids, resolved)
    return Prepared(spec.name, route.manifest.version, route.variant, spec.kind, row)
