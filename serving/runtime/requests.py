"""From a routed task-level input to an engine row: template, tokenize, resolve params."""

from dataclasses import dataclass

from promptmux.registry import GenerationParams, TaskKind, TaskSpec
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
    engine: Engine, spec: TaskSpec, route: Route, prompt: CachedPrompt, texts: list[str],
    params: ParamsOverride | None = None, tokens_field: str = "max_new_tokens",
) -> list[Prepared]:
    """Everything that can fail for a request's inputs fails here, before they join a batch:
    the template, tokenization, the verbalizers and the parameters against the engine's
    limits. The verbalizers and parameters are the same for every input: done once."""
    if spec.kind is TaskKind.classification:
        row_type: type[GenerationRow] | type[ClassificationRow] = ClassificationRow
        per_task: GenerationParams | dict[str, list[int]] = engine.verbalizers(spec.labels)
    else:
        row_type, per_task = GenerationRow, (params or ParamsOverride()).apply(spec.generation)
        engine.check_params(per_task, tokens_field)
    return [Prepared(spec.name, route.manifest.version, route.variant, spec.kind,
                     row_type(prompt, engine.encode(spec.render(text)), per_task))
            for text in texts]
