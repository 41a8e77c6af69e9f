"""Offline task-level inference on the engine client, without a server (`promptmux generate`).
Generation and classification rows of any tasks are batched together; a bad request
(unknown task, input too long, past the model's positions, ...) becomes an error result
for that request alone, and every other request is answered.
"""

from promptmux.core.errors import PromptmuxError
from promptmux.registry import Registry, TaskKind
from promptmux.serving.engine.client import EngineClient, EngineRequest
from promptmux.serving.runtime.routing import RegistryView
from promptmux.serving.runtime.schemas import TaskRequest, TaskResult


class OfflineRunner:
    def __init__(self, client: EngineClient, registry: Registry) -> None:
        self.client = client
        self.view = RegistryView(registry)
        self.view.refresh()

    def run(self, requests: list[TaskRequest]) -> list[TaskResult]:
        results: list[TaskResult] = []
        queued: list[tuple[TaskResult, EngineRequest]] = []
        for request in requests:
            try:
                route = self.view.route(request.task, request.version, request.alias, request.routing_key)
                spec = self.view.task(request.task).record.spec
                params = request.params.apply(spec.generation) if spec.kind is TaskKind.generation else None
            except PromptmuxError as exc:
                results.append(TaskResult(task=request.task, input=request.input, error=str(exc)))
                continue
            result = TaskResult(task=request.task, input=request.input, version=route.manifest.version,
                                variant=route.variant, kind=spec.kind.value)
            results.append(result)
            queued.append((result, EngineRequest(spec, route.manifest, [request.input], params)))
        for (result, _), output in zip(queued, self.client.run([request for _, request in queued])):
            if isinstance(output, Exception):
                result.error = str(output) or type(output).__name__
            else:
                result.result = output
        return results
