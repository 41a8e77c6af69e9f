"""Offline task-level inference on top of the engine (`promptmux generate`).

Generation and classification rows of any tasks are batched together; a bad request
(unknown task, input too long, past the model's positions, ...) becomes an error result
for that request alone, and every other request is answered.
"""

from promptmux.core.errors import PromptmuxError
from promptmux.registry import Registry
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.offline import run
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
        queued: list[tuple[TaskResult, GenerationRow | ClassificationRow]] = []
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
            queued.append((result, prepared.row))
        for (result, _), output in zip(queued, run(self.engine, [row for _, row in queued])):
            if isinstance(output, Exception):
                result.error = str(output) or type(output).__name__
            else:
                result.result = output
        return results
