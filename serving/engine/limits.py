"""The engine's limits as a request meets them: one wording of "too many tokens", and the
check that a row fits the model's positions."""

from promptmux.core.errors import PositionLimitError


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
