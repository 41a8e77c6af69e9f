"""Errors of the runtime a request can meet; the HTTP layer maps them to statuses."""

from promptmux.registry.errors import PromptmuxError, UnavailableError


class RequestTimeout(PromptmuxError):
    """The request ran past the configured per-request timeout (HTTP 504)."""


class ForgedFeedbackId(PromptmuxError):
    """A feedback id whose signature is not this deployment's (HTTP 403)."""


class RouteUnavailable(UnavailableError):
    """The version a request would be served by is known but not servable (HTTP 503)."""


class RateLimited(PromptmuxError):
    """A tenant over one of its quotas (HTTP 429): `headers` are the response's Retry-After and
    x-ratelimit-* headers, `limit` which limit it met (requests, tokens, concurrency)."""

    def __init__(self, message: str, headers: dict[str, str], limit: str) -> None:
        super().__init__(message)
        self.headers, self.limit = headers, limit

