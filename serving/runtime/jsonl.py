"""Offline task-level inference on top of the engine (`promptmux generate`).

Generation and classification rows of any tasks are batched together; a bad request
(unknown task, input too long, ...) becomes an error result for that request alone.
"""

from promptmux.registry import PromptmuxError, Registry, TaskKind
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.requests import prepare
from promptmux.serving.runtime.routing import RegistryView
from promptmux.serving.runtime.schemas import TaskRequest, TaskResult


class TaskRunner:
    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.view = RegistryView(registry)
        self.view.refresh()

    def run(self, requests: list[TaskRequest]) -> list[TaskResult]:
        results: list[TaskResult] = []
        generation: list[tuple[TaskResult, GenerationRow]] = []
        classification: list[tuple[TaskResult, ClassificationRow]] = []
        for request in requests:
            try:
                route = self.view.route(request.task, request.version, request.alias, request.routing_key)
                spec = self.view.task(request.task).record.spec
                prompt = self.engine.prompt(route.manifest)
                prepared = prepare(self.engine, spec, route, prompt, [request.input], request.params)[0]
            except PromptmuxError as exc:
                results.append(TaskResult(task=request.task, input=request.input, error=str(exc)))
                continue
            result = TaskResult(task=request.task, input=request.input, version=prepared.version,
                                variant=prepared.variant, kind=prepared.kind.value)
            results.append(result)
            queue = classification if prepared.kind is TaskKind.classification else generation
            queue.append((result, prepared.row))
        for (result, _), output in zip(generation, generate(self.engine, [row for _, row in generation])):
            result.result = output
        for (result, _), output in zip(classification, self.engine.classify([row for _, row in classification])):
            result.result = output
        return results
