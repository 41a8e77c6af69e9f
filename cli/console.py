"""`promptmux ui`: the console in the browser, served from the registry alone (no model is
loaded, so it starts in seconds). `promptmux serve` mounts the same console at `/ui`."""

import os
from typing import Annotated

import typer

from promptmux.cli.common import RegistryOption, open_registry
from promptmux.core.errors import PromptmuxError
from promptmux.serving.hosting.ports import check_port
from promptmux.tasks.progress import console, err_console

ADMIN_KEY_ENV = "PROMPTMUX_API_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui_command(
    registry: RegistryOption = "",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8001,
    allow_edits: Annotated[bool, typer.Option("--allow-edits", help="with no admin key and no tenant configured, let "
                                              "anyone who reaches the console edit (loopback only)")] = False,
    refresh: Annotated[float, typer.Option(min=0.5, help="seconds between updates of a live experiment's page")] = 3.0,
) -> None:
    """Serve the console: tasks, versions and live experiments, with promote and roll back.
    Logins take the API's keys: the admin key ($PROMPTMUX_API_TOKEN) and tenants' keys."""
    reg = open_registry(registry)
    check_port(host, port)
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from promptmux.serving.console import CONSOLE_PATH
    from promptmux.serving.console.app import console_app

    admin_key = os.environ.get(ADMIN_KEY_ENV) or None
    open_console = admin_key is None and not reg.tenants.all()
    if open_console and host not in LOOPBACK:
        if allow_edits:
            raise PromptmuxError(f"--allow-edits on {host}: with no admin key and no tenant anyone who reaches it could "
                                 f"edit; set {ADMIN_KEY_ENV}, or listen on 127.0.0.1")
        err_console.print(f"note: no admin key and no tenant: anyone who reaches {host}:{port} can read every task "
                          f"(set {ADMIN_KEY_ENV} to require a login)", highlight=False)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount(CONSOLE_PATH, console_app(reg, admin_key, allow_edits, refresh))

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/")

    mode = "open, read-only" if open_console and not allow_edits else "open, editable" if open_console else \
        "log in with an API key"
    console.print(f"promptmux console for {reg.uri} on http://{host}:{port}{CONSOLE_PATH}/ ({mode})", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
