"""The HTTP API (FastAPI) over a `PromptmuxService`, assembled from its routers:
promptmux's own endpoints, the OpenAI-compatible API, introspection, and the error
handlers and gate in front of them all; the console (`serving/console/`) at `/ui`, which
reads the registry and keeps its own sessions.

Every failure a request can cause is answered with a 4xx and a message; overload with
503 and `Retry-After`. A 500 means a bug.
"""

from fastapi import FastAPI

from promptmux.serving.console import CONSOLE_PATH
from promptmux.serving.console.app import console_app
from promptmux.serving.http.chat import chat_router
from promptmux.serving.http.errors import ErrorResponses, install_error_handlers
from promptmux.serving.http.guard import Guard
from promptmux.serving.http.introspection import introspection_router
from promptmux.serving.http.native import native_router
from promptmux.serving.http.openai import openai_router
from promptmux.serving.runtime.service import PromptmuxService


def build_app(service: PromptmuxService) -> FastAPI:
    settings = service.settings
    app = FastAPI(title="promptmux", description="Multi-task soft-prompt serving on one frozen base model.")
    error = ErrorResponses(service.metrics)
    app.add_middleware(Guard, in_flight=service.in_flight, refuse=error, replica=service.replica,
                       identify=service.identify, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app, error)
    for router in (native_router(service), openai_router(service), chat_router(service), introspection_router(service)):
        app.include_router(router)
    admin_key = settings.api_token.get_secret_value() if settings.api_token else None
    app.mount(CONSOLE_PATH, console_app(service.registry, admin_key, settings.console_edits))
    return app
