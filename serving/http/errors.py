"""Every failure as JSON: `{"error": {"message", "status"}}`, counted by endpoint and status.

Domain errors map to statuses by kind (a 4xx says what to fix; overload and a replica
that cannot serve get 503 with `Retry-After`); a 500 means a bug, and its traceback goes
to the log, never to the client. An invalid body is 422 naming the field on promptmux's own
routes, and 400 on the OpenAI-compatible ones, as OpenAI answers it.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from promptmux.registry import (
    ConflictError,
    IncompatiblePromptError,
    InvalidArtifactError,
    InvalidNameError,
    NotFoundError,
    PromptmuxError,
    StorageError,
)
from promptmux.registry.errors import describe
from promptmux.serving.engine.errors import EngineUnavailable, OverloadedError, RequestError
from promptmux.serving.runtime.errors import ForgedFeedbackId, RequestTimeout, RouteUnavailable
from promptmux.serving.runtime.metrics import ServingMetrics

log = logging.getLogger(__name__)
STATUS = [
    (NotFoundError, 404), (InvalidNameError, 404), (OverloadedError, 503), (EngineUnavailable, 503),
    (RouteUnavailable, 503), (StorageError, 503),
    (RequestTimeout, 504), (ForgedFeedbackId, 403), (RequestError, 400), (IncompatiblePromptError, 409), (InvalidArtifactError, 409),
    (ConflictError, 409), (PromptmuxError, 400),
]
RETRY_AFTER_S = "1"
OPENAI_ENDPOINTS = {"/v1/completions"}


def invalid_status(request: Request) -> int:
    """An invalid body: 400 on the OpenAI-compatible routes, as OpenAI answers it; 422 on promptmux's own."""
    return 400 if endpoint_of(request) in OPENAI_ENDPOINTS else 422


def endpoint_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


class ErrorResponses:
    """Builds the JSON error response of a request, and counts it."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def __call__(self, request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        self.metrics.errors.labels(endpoint_of(request), str(status)).inc()
        if status == 503:
            headers = {"Retry-After": RETRY_AFTER_S, **(headers or {})}
        return JSONResponse({"error": {"message": message, "status": status}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, error: ErrorResponses) -> None:
    @app.exception_handler(PromptmuxError)
    async def promptmux_error(request: Request, exc: PromptmuxError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        return error(request, status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(request, invalid_status(request), describe(exc.errors(), "body", skip=1) or "invalid request body")

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, exc: ValidationError) -> JSONResponse:
        return error(request, invalid_status(request), describe(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", endpoint_of(request))
        return error(request, 500, f"internal error: {type(exc).__name__}")
