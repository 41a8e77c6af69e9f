"""Errors the engine raises for a request; the HTTP layer maps them to statuses."""

from promptmux.registry.errors import PromptmuxError


class RequestError(PromptmuxError, ValueError):
    """The request itself is invalid or exceeds a configured limit."""


class OverloadedError(PromptmuxError):
    """The engine's waiting queue is full: retry later (HTTP 429/503 with Retry-After)."""


class EngineUnavailable(PromptmuxError):
    """The engine's loop has stopped: this replica serves nothing until it is replaced (HTTP 503)."""


def over_limit(field: str, value: int, limit: int) -> str:
    """The one wording of "too many tokens", under the field name the client sent."""
    return f"{field} {value} exceeds the limit of {limit} (engine.max_new_tokens)"
