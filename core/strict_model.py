"""The base of every pydantic model at a boundary (HTTP body, registry file, config)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A model at a boundary: unknown fields are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid")


def exactly_one(first: object, second: object, message: str) -> None:
    """A model's rule that one of two fields is given and not both: `message` (as pydantic's
    ValueError) otherwise."""
    if (first is None) == (second is None):
        raise ValueError(message)


def needs(value: object, given: object, message: str) -> None:
    """A model's rule that a field is set only with another one given: `message` (as pydantic's
    ValueError) otherwise."""
    if value is not None and not given:
        raise ValueError(message)
