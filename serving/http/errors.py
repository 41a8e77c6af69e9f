"""Every failure as JSON, counted by endpoint and status: `{"error": {"message", "status"}}` on
promptmux's own routes, OpenAI's shape `{"error": {"message", "type", "param", "code"}}` on
the OpenAI-compatible ones (`/v1/completions`, `/v1/chat/completions`, `/v1/models`).

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

from promptmux.core.errors import (
    ConflictError,
    ForgedFeedbackId,
    IncompatiblePromptError,
    InvalidArtifactError,
    InvalidNameError,
    InvalidRequestError,
    NotFoundError,
    PromptmuxError,
    RateLimited,
    RequestTimeout,
    StorageError,
    UnavailableError,
    describe,
)
from promptmux.serving.runtime.metrics import ServingMetrics

log = logging.getLogger(__name__)
STATUS = [  # by kind, first match wins
    (NotFoundError, 404), (InvalidNameError, 404), (UnavailableError, 503), (StorageError, 503),
    (RequestTimeout, 504), (RateLimited, 429), (ForgedFeedbackId, 403), (InvalidRequestError, 400), (IncompatiblePromptError, 409),
    (InvalidArtifactError, 409), (ConflictError, 409), (PromptmuxError, 400),
]
RETRY_AFTER_S = "1"
OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}
OPENAI_CODES = {404: "model_not_found", 429: "rate_limit_exceeded"}


def is_openai(request: Request) -> bool:
    """Whether the request is on an OpenAI-compatible route (under any route prefix)."""
    return request.url.path.rstrip("/").endswith(OPENAI_PATHS)


def invalid_status(request: Request) -> int:
    """An invalid body: 400 on the OpenAI-compatible routes, as OpenAI answers it; 422 on promptmux's own."""
    return 400 if is_openai(request) else 422


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error body: a type by status, the field at fault where known, a code where OpenAI has one."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": OPENAI_CODES.get(status)}}


def endpoint_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


class ErrorResponses:
    """Builds the JSON error response of a request, and counts it."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def __call__(self, request: Request, status: int, message: str, headers: dict | None = None,
                 param: str | None = None) -> JSONResponse:
        self.metrics.errors.labels(endpoint_of(request), str(status)).inc()
        if status == 503:
            headers = {"Retry-After": RETRY_AFTER_S, **(headers or {})}
        body = openai_error(status, message, param) if is_openai(request) else {"error": {"message": message, "status": status}}
        return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, error: ErrorResponses) -> None:
    @app.exception_handler(PromptmuxError)
    async def promptmux_error(request: Request, exc: PromptmuxError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        return error(request, status, str(exc), getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        param = ".".join(map(str, errors[0]["loc"][1:])) or None if errors else None
        return error(request, invalid_status(request), describe(errors, "body", skip=1) or "invalid request body",
                     param=param)

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, exc: ValidationError) -> JSONResponse:
        return error(request, invalid_status(request), describe(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", endpoint_of(request))
        return error(request, 500, f"internal error: {type(exc).__name__}")
