"""The gate in front of the API: who calls (the bearer key: the admin, a tenant, or 401),
refusals while draining, body size, the in-flight count. All checked before a body is
parsed. The caller is handed to the routers in the request's state (`caller_of`);
`/metrics` needs the admin key once the endpoint is guarded. The console (`/ui`) passes
through: its session cookie, not a bearer key, says who looks.

A plain ASGI middleware rather than Starlette's `BaseHTTPMiddleware`: that one runs the
app in a task group of its own, which turns a client that goes away into an exception
group (a 500 with a traceback) and ends before a streamed body does. Here a request is
in flight from its first byte in to its last byte out, which is what draining waits for.
"""

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptmux.serving.console import CONSOLE_PATH  # a browser sends no bearer key: the console's sessions guard it
from promptmux.serving.runtime.service import InFlight
from promptmux.serving.runtime.tenants import ADMIN, Caller

REPLICA_HEADER = b"x-promptmux-replica"
DRAINING = "this replica is shutting down; retry and another one will serve you"
UNGUARDED = "/healthz"  # load balancers probe health without a key (and learn only that it is ok)
ALWAYS_OPEN = "/metrics"  # scraped until the last moment, draining or not


Refusal = Callable[[Request, int, str, dict[str, str] | None], Response]


class Guard:
    def __init__(
        self, app: ASGIApp, in_flight: InFlight, refuse: Refusal, replica: str,
        identify: Callable[[str | None], Caller | None], max_body_bytes: int,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.in_flight = in_flight
        self.refuse = refuse
        self.replica = replica.encode()
        self.identify = identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        request = Request(scope)
        path = request.url.path.removeprefix(scope.get("root_path", ""))
        if path == CONSOLE_PATH or path.startswith(f"{CONSOLE_PATH}/"):
            await self.app(scope, receive, tagged)
            return
        refusal = self.refusal(request, path)
        if refusal is None and "content-length" not in request.headers:  # chunked: read it, within the limit
            body = await self.capped_body(receive)
            if body is None:
                refusal = self.too_large(request)
            else:
                receive = replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, tagged)
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, tagged)
        finally:
            self.in_flight.count -= 1

    def refusal(self, request: Request, path: str) -> Response | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        caller = self.identify(given if scheme.lower() == "bearer" and given else None)
        if caller is None and path != UNGUARDED:
            return self.refuse(request, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if path == ALWAYS_OPEN and caller is not ADMIN:
            return self.refuse(request, 403, "the metrics need the admin key", None)
        request.scope.setdefault("state", {})["caller"] = caller
        if self.in_flight.draining and path != ALWAYS_OPEN:
            return self.refuse(request, 503, DRAINING, None)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return self.too_large(request)
        return None

    def too_large(self, request: Request) -> Response:
        return self.refuse(request, 413, f"request body over the limit of {self.max_body_bytes} bytes", None)

    async def capped_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it grows past the limit."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)


def caller_of(request: Request) -> Caller:
    """Who sent the request, as the gate identified them."""
    return request.scope["state"]["caller"]


def known_caller(request: Request) -> bool:
    """Whether the request's key opens this endpoint (any key does where it is open): on
    `/healthz`, the one route answered without one, only such a caller learns more than ok."""
    return request.scope["state"]["caller"] is not None


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body already read, then defers to the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
