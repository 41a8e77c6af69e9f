"""promptmux's errors, every one of them, and how a validation error reads. Every one
carries a message meant for the user.

One hierarchy in one module, so that a reader sees every kind at once: the CLI and the HTTP
layer turn `PromptmuxError` into a clean message (exit code 1, or an HTTP status chosen by
kind: `InvalidRequestError` 400, `UnavailableError` 503, ...); anything else escaping is a bug.
"""


import re
from typing import Any

FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def describe(errors: list[dict[str, Any]], whole: str = "value", skip: int = 0, limit: int | None = None) -> str:
    """`field.path: message; ...` for the `errors()` of a pydantic (or FastAPI) validation
    error; `skip` drops leading location parts (FastAPI's "body"), `whole` names an error
    about the object as a whole. pydantic's "Value error, " before our own messages is dropped,
    and so are the tags it puts in a path for each member of a union (`list[constrained-str]`,
    `function-after[...]`): Python internals, not the client's fields. Repeated lines are said once."""
    lines = dict.fromkeys(f"{'.'.join(str(p) for p in e['loc'][skip:] if _field(p)) or whole}: "
                          f"{e['msg'].removeprefix('Value error, ')}" for e in errors[:limit])
    return "; ".join(lines)


def _field(part: object) -> bool:
    """Whether a location part names a field or an index (not a union member's tag)."""
    return isinstance(part, int) or (isinstance(part, str) and FIELD.fullmatch(part) is not None)


class PromptmuxError(Exception):
    """Base of every user-facing promptmux error."""


class InvalidNameError(PromptmuxError, ValueError):
    """A task, alias or variant name does not match the safe name pattern."""


class NotFoundError(PromptmuxError, LookupError):
    """A task, version, alias or file does not exist."""


class ConflictError(PromptmuxError):
    """The operation clashes with the registry's current state (exists, in use, ...)."""


class InvalidArtifactError(PromptmuxError, ValueError):
    """A prompt tensor or adapter directory is malformed, corrupt or unsupported."""


class TooLargeError(InvalidArtifactError):
    """A task or an import past a size limit (`core/limits.py`); the message names the limit."""


class IncompatiblePromptError(PromptmuxError, ValueError):
    """A prompt does not fit the task's base model (hidden size, vocabulary, weights)."""


class CorruptFileError(PromptmuxError):
    """A registry file (task.json, a manifest, an alias or rollout file) cannot be parsed;
    the message names the file, and so the task."""


class StorageError(PromptmuxError):
    """The registry's storage refused a write (a full disk, no permission); the message says
    whether the edit changed nothing or will be finished later."""


class InvalidRequestError(PromptmuxError, ValueError):
    """A request to serve is invalid or exceeds a configured limit (HTTP 400)."""


class InvalidConversationError(InvalidRequestError):
    """A conversation a task cannot take (no user message, or a conversation for a text task)."""


class NoChatTemplateError(PromptmuxError):
    """A chat-format task on a base model whose tokenizer has no chat template."""


class PositionLimitError(InvalidRequestError):
    """A row would run past the positions the model has (or the engine's KV budget).

    `version_caused` is true when the input and the new tokens alone would fit and the
    prompt version's virtual tokens are what pushes the row over: the version, not the
    request, is at fault, and a rollout counts the refusal against that version's variant.
    """

    def __init__(self, message: str, version_caused: bool) -> None:
        super().__init__(message)
        self.version_caused = version_caused


class ModelUnavailableError(PromptmuxError):
    """A base model that cannot be loaded here: a missing weights package, local folder or Hub access."""


class DataError(PromptmuxError):
    """The data cannot be read or lacks the named fields."""


class RequestTimeout(PromptmuxError):
    """The request ran past the configured per-request timeout (HTTP 504)."""


class ForgedFeedbackId(PromptmuxError):
    """A feedback id whose signature is not this deployment's (HTTP 403)."""


class RateLimited(PromptmuxError):
    """A tenant over one of its quotas (HTTP 429): `headers` are the response's Retry-After and
    x-ratelimit-* headers, `limit` which limit it met (requests, tokens, concurrency)."""

    def __init__(self, message: str, headers: dict[str, str], limit: str) -> None:
        super().__init__(message)
        self.headers, self.limit = headers, limit


class UnavailableError(PromptmuxError):
    """What a request asks cannot be served now, by no fault of its own: retry later (HTTP 503
    with Retry-After)."""


class OverloadedError(UnavailableError):
    """The engine's waiting queue is full: retry later (HTTP 429/503 with Retry-After)."""


class EngineUnavailable(UnavailableError):
    """The engine's loop has stopped: this replica serves nothing until it is replaced (HTTP 503)."""


class RouteUnavailable(UnavailableError):
    """The version a request would be served by is known but not servable (HTTP 503)."""
