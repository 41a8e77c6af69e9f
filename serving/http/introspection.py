"""What a replica serves and how it is: tasks, health, Prometheus metrics."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from promptmux.serving.http.guard import caller_of, known_caller
from promptmux.serving.runtime.service import PromptmuxService


def introspection_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/tasks")
    async def tasks(request: Request) -> dict:
        return {"tasks": service.task_summaries(caller_of(request))}

    @router.get("/v1/tasks/{task}")
    async def task(task: str, request: Request) -> dict:
        return service.task_summary(task, detail=True, caller=caller_of(request))

    @router.get("/healthz")
    async def healthz(request: Request) -> dict:
        health = service.health()
        return health if known_caller(request) else {"status": health["status"]}

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
