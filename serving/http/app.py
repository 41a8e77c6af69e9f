"""The HTTP API (FastAPI) over a `PromptmuxService`: promptmux's own endpoints, the
OpenAI-compatible completions API, introspection, health and Prometheus metrics.

Every failure a request can cause is answered with a 4xx and a message; overload with
503 and `Retry-After`. A 500 means a bug.
"""

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from promptmux.registry import (
    ConflictError,
    IncompatiblePromptError,
    InvalidArtifactError,
    InvalidNameError,
    NotFoundError,
    PromptmuxError,
    TaskKind,
)
from promptmux.registry.errors import describe
from promptmux.serving.engine.errors import EngineUnavailable, OverloadedError, RequestError, over_limit
from promptmux.serving.engine.scheduler import StreamEvent
from promptmux.serving.http.api import (
    ClassifyBody,
    ClassifyOutput,
    ClassifyResponse,
    CompletionBody,
    GenerateBody,
    GenerateOutput,
    GenerateResponse,
)
from promptmux.serving.http.guard import Guard
from promptmux.serving.runtime.errors import RequestTimeout, RouteUnavailable
from promptmux.serving.runtime.requests import Prepared, Query
from promptmux.serving.runtime.service import PromptmuxService

log = logging.getLogger(__name__)
STATUS = [
    (NotFoundError, 404), (InvalidNameError, 404), (OverloadedError, 503), (EngineUnavailable, 503),
    (RouteUnavailable, 503),
    (RequestTimeout, 504), (RequestError, 400), (IncompatiblePromptError, 409), (InvalidArtifactError, 409),
    (ConflictError, 409), (PromptmuxError, 400),
]
RETRY_AFTER_S = "1"


def parse_model(model: str) -> tuple[str, int | None, str | None]:
    """OpenAI `model` → (task, version, alias): `task`, `task@3` or `task:staging`."""
    if "@" in model:
        task, _, version = model.partition("@")
        if not version.isdigit() or int(version) < 1:
            raise RequestError(f"invalid model {model!r}: expected task@VERSION with a positive integer")
        return task, int(version), None
    task, _, alias = model.partition(":")
    return task, None, alias or None


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


def build_app(service: PromptmuxService) -> FastAPI:
    settings = service.settings
    app = FastAPI(title="promptmux", description="Multi-task soft-prompt serving on one frozen base model.")
    replica = f"{socket.gethostname()}:{os.getpid()}"
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    def endpoint_of(request: Request) -> str:
        route = request.scope.get("route")
        return getattr(route, "path", "unmatched")

    def error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        service.metrics.errors.labels(endpoint_of(request), str(status)).inc()
        if status == 503:
            headers = {"Retry-After": RETRY_AFTER_S, **(headers or {})}
        return JSONResponse({"error": {"message": message, "status": status}}, status_code=status, headers=headers)

    app.add_middleware(Guard, in_flight=service.in_flight, refuse=error, replica=replica, token=token,
                       max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(PromptmuxError)
    async def promptmux_error(request: Request, exc: PromptmuxError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        return error(request, status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe(exc.errors(), "body", skip=1)
        return error(request, 422, problems or "invalid request body")

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, exc: ValidationError) -> JSONResponse:
        problems = describe(exc.errors())
        return error(request, 422, problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", endpoint_of(request))
        return error(request, 500, f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------ promptmux
    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateBody) -> GenerateResponse | StreamingResponse:
        items = service.prepare(body.query(), TaskKind.generation, body.params)
        if not body.stream:
            outputs = await service.generate(items, "generate")
            return GenerateResponse(outputs=[
                GenerateOutput(index=i, task=item.task, version=item.version, variant=item.variant, text=o.text,
                               token_ids=o.token_ids, finish_reason=o.finish_reason, usage=o.usage)
                for i, (item, o) in enumerate(zip(items, outputs))
            ])

        async def events() -> AsyncIterator[dict]:
            async for index, event in service.merged_events(items, service.open_streams(items), "generate"):
                yield stream_event(items[index], index, event)

        return sse(events())

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody) -> ClassifyResponse:
        items = service.prepare(body.query(), TaskKind.classification)
        outputs = await service.classify(items, "classify")
        return ClassifyResponse(outputs=[
            ClassifyOutput(index=i, task=item.task, version=item.version, variant=item.variant, label=o.label,
                           probabilities=o.probabilities, usage=o.usage)
            for i, (item, o) in enumerate(zip(items, outputs))
        ])

    # ------------------------------------------------------------ OpenAI
    @app.post("/v1/completions", response_model=None)  # JSON or an event stream
    async def completions(body: CompletionBody) -> dict | StreamingResponse:
        task, version, alias = parse_model(body.model)
        limit = settings.engine.max_new_tokens
        if body.max_tokens is not None and body.max_tokens > limit:  # named as the OpenAI request names it
            raise RequestError(over_limit("max_tokens", body.max_tokens, limit))
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        items = service.prepare(Query(task, prompts, version, alias, body.user), None, body.params())
        created, completion_id = int(time.time()), f"cmpl-{uuid.uuid4().hex}"

        def envelope(choices: list[dict], items_: list[Prepared]) -> dict:
            served = items_[0]
            return {"id": completion_id, "object": "text_completion", "created": created, "model": body.model,
                    "choices": choices,
                    "promptmux": {"task": served.task, "version": served.version, "variant": served.variant}}

        if items[0].kind is TaskKind.classification:
            labels = await service.classify(items, "completions")
            choices = [{"index": i, "text": o.label, "finish_reason": "stop", "logprobs": None} for i, o in enumerate(labels)]
            usage = sum_usage([o.usage.model_dump() for o in labels])
            if body.stream:
                return sse(_one([envelope(choices, items)]))
            return {**envelope(choices, items), "usage": usage}
        if not body.stream:
            outputs = await service.generate(items, "completions")
            choices = [{"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
                       for i, o in enumerate(outputs)]
            return {**envelope(choices, items), "usage": sum_usage([o.usage.model_dump() for o in outputs])}

        async def chunks() -> AsyncIterator[dict]:
            async for index, event in service.merged_events(items, service.open_streams(items), "completions"):
                if event.error:
                    yield {"error": {"message": event.error}}
                    continue
                choice = {"index": index, "text": event.text, "finish_reason": event.finish_reason, "logprobs": None}
                yield envelope([choice], items)

        return sse(chunks())

    @app.get("/v1/models")
    async def models() -> dict:
        data = []
        for name in sorted(service.view.entries):
            entry = service.view.entries[name]
            created = int(entry.record.created_at.timestamp())
            ids = [name, *(f"{name}:{alias}" for alias in sorted(entry.aliases.keys() | entry.broken.keys()))]
            data += [{"id": model_id, "object": "model", "created": created, "owned_by": "promptmux"} for model_id in ids]
        return {"object": "list", "data": data}

    # ------------------------------------------------------------ introspection
    @app.get("/v1/tasks")
    async def tasks() -> dict:
        return {"tasks": [service.task_summary(name) for name in sorted(service.view.entries)]}

    @app.get("/v1/tasks/{task}")
    async def task(task: str) -> dict:
        return service.task_summary(task, detail=True)

    @app.get("/healthz")
    async def healthz() -> dict:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def stream_event(item: Prepared, index: int, event: StreamEvent) -> dict:
    payload = {"index": index, "task": item.task, "version": item.version, "variant": item.variant,
               "text": event.text, "token_ids": event.token_ids, "finish_reason": event.finish_reason}
    if event.output is not None:
        payload["usage"] = event.output.usage.model_dump()
    if event.error:
        payload["error"] = event.error
    return payload


def sum_usage(usages: list[dict]) -> dict:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {key: sum(usage[key] for usage in usages) for key in keys}


async def _one(events: list[dict]) -> AsyncIterator[dict]:
    for event in events:
        yield event
