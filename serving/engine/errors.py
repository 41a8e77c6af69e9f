"""Errors the engine raises for a request, each of a kind in `registry/errors.py` that the HTTP
layer maps to a status."""

from promptmux.registry.errors import InvalidRequestError, UnavailableError


class RequestError(InvalidRequestError):
    """The request itself is invalid or exceeds a configured limit."""


class PositionLimitError(RequestError):
    """A row would run past the positions the model has (or the engine's KV budget).

    `version_caused` is true when the input and the new tokens alone would fit and the
    prompt version's virtual tokens are what pushes the row over: the version, not the
    request, is at fault, and a rollout counts the refusal against that version's variant.
    """

    def __init__(self, message: str, version_caused: bool) -> None:
        super().__init__(message)
        self.version_caused = version_caused


class OverloadedError(UnavailableError):
    """The engine's waiting queue is full: retry later (HTTP 429/503 with Retry-After)."""


class EngineUnavailable(UnavailableError):
    """The engine's loop has stopped: this replica serves nothing until it is replaced (HTTP 503)."""


def over_limit(field: str, value: int, limit: int) -> str:
    """The one wording of "too many tokens", under the field name the client sent."""
    return f"{field} {value} exceeds the limit of {limit} (engine.max_new_tokens)"


def check_positions(virtual: int, inputs: int, new: int, limit: int, what: str, new_field: str = "max_new_tokens") -> None:
    """Refuse a row whose virtual tokens, input and new tokens do not fit in `limit`
    positions (`what` names the limit), naming the three numbers."""
    needed = virtual + inputs + new
    if needed > limit:
        raise PositionLimitError(
            f"virtual tokens ({virtual}) + input tokens ({inputs}) + {new_field} ({new}) = {needed} exceed {what}",
            version_caused=inputs + new <= limit,
        )
