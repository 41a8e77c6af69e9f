"""The base of every pydantic model at a boundary (HTTP body, registry file, config)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A model at a boundary: unknown fields are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid")
