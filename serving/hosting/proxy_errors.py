"""JSON error bodies from Ray Serve's HTTP proxy, too.

Some failures are answered by the proxy, not by a replica: a replica that dies with the
request in it (the proxy then sends nothing, and its uvicorn answers a plain-text 500
"Internal Server Error"), back-pressure, the proxy's own timeout, a route that is gone.
This middleware runs in the proxy (Ray Serve calls `middlewares` at proxy start when
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` is `CALLBACK`) and gives
those the documented body, `{"error": {"message", "status"}}`. A response that has
already started (a stream cut by its replica's death) cannot be changed: the connection
closes without `[DONE]`.

The proxy's route table (`/-/routes`: every application and where it is mounted) is answered
only to the admin key (`PROMPTMUX_API_TOKEN`, which the proxy inherits from the process that
started the cluster, as `promptmux serve` and the Dockerfile do); with no admin key set it is
not served. `/-/healthz` stays open for load balancers: it says only that the proxy is up.
"""

import hmac
import json
import os

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "promptmux.serving.hosting.proxy_errors:middlewares"
REPLICA_LOST = "the replica serving this request stopped before answering; retry and another one will serve you"
ROUTES = "/-/routes"
ADMIN_KEY_ENV = "PROMPTMUX_API_TOKEN"


def middlewares() -> list[Middleware]:
    return [Middleware(JSONErrors)]


class JSONErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == ROUTES and not admin(scope):
            await answer(send, 401, "the proxy's routes need the admin key", None)
            return
        if scope["type"] != "http" or scope["path"].startswith("/-/"):  # the proxy's own probes stay as they are
            await self.app(scope, receive, send)
            return
        started = False
        held: dict = {}  # the status, Retry-After and text of a non-JSON error being rewritten

        async def send_json_errors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers", []))
                if message["status"] >= 400 and not headers.get(b"content-type", b"").startswith(b"application/json"):
                    held.update(status=message["status"], retry_after=headers.get(b"retry-after"), text=b"")
                    return
            if held and message["type"] == "http.response.body":
                held["text"] += message.get("body", b"")
                if not message.get("more_body", False):
                    text = held["text"].decode(errors="replace").strip() or "error"
                    await answer(send, held["status"], text, held["retry_after"])
                return
            await send(message)

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception as exc:  # the row fails alone
            if started:
                raise
            await answer(send, 500, f"internal error in the Ray Serve proxy: {type(exc).__name__}", None)
            return
        if not started:  # the proxy lost the replica (it logs "Request failed: the actor died") and sent nothing
            await answer(send, 503, REPLICA_LOST, b"1")


def admin(scope: Scope) -> bool:
    """Whether the request carries the admin key (never, when none is set)."""
    key = os.environ.get(ADMIN_KEY_ENV)
    given = dict(scope.get("headers", [])).get(b"authorization", b"").decode(errors="replace")
    return bool(key) and hmac.compare_digest(given.encode(), f"Bearer {key}".encode())


async def answer(send: Send, status: int, message: str, retry_after: bytes | None) -> None:
    body = json.dumps({"error": {"message": message, "status": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
