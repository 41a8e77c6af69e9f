"""Task-level requests on top of the engine: route, template, batch generation and
classification rows of any tasks together, and report per-request results or errors.

A bad request (unknown task, input too long, ...) becomes an error result for that
request alone; the rest of the batch is served.
"""

from registry import PromptmuxError, Registry, TaskKind, TaskRecord
from serving.batching import ClassificationRow, GenerationRow
from serving.engine import Engine
from serving.routing import resolve_version
from serving.schemas import TaskRequest, TaskResult


class TaskRunner:
    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry
        self._tasks: dict[str, TaskRecord] = {}

    def _task(self, name: str) -> TaskRecord:
        if name not in self._tasks:
            self._tasks[name] = self.registry.get_task(name)
        return self._tasks[name]

    def run(self, requests: list[TaskRequest]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(requests)
        generation: list[tuple[int, GenerationRow]] = []
        classification: list[tuple[int, ClassificationRow]] = []
        for i, request in enumerate(requests):
            try:
                spec = self._task(request.task).spec
                manifest = resolve_version(self.registry, request.task, request.version, request.alias)
                prompt = self.engine.prompt(manifest)
                ids = self.engine.encode(spec.render(request.input))
                if spec.kind is TaskKind.classification:
                    classification.append((i, ClassificationRow(prompt, ids, spec.labels)))
                else:
                    params = request.params.apply(spec.generation)
                    self.engine.check_params(params)
                    generation.append((i, GenerationRow(prompt, ids, params)))
                results[i] = TaskResult(
                    task=request.task, version=manifest.version, input=request.input, kind=spec.kind.value
                )
            except PromptmuxError as exc:
                results[i] = TaskResult(
                    task=request.task, version=None, input=request.input, kind=None, error=str(exc)
                )
        for (i, _), output in zip(generation, self.engine.generate([row for _, row in generation])):
            results[i].result = output
        for (i, _), output in zip(classification, self.engine.classify([row for _, row in classification])):
            results[i].result = output
        return results
