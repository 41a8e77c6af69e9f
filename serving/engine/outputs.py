"""What the engine returns for a row: generated text and tokens, or a label, with token usage."""

from typing import Literal

from pydantic import Field

from promptmux.core.strict_model import StrictModel
from promptmux.core.usage import Usage


class TopLogprob(StrictModel):
    token_id: int
    logprob: float


class TokenLogprob(StrictModel):
    """A generated token's log-probability under the model (before any sampling processor),
    with the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: list[TopLogprob]


class GenerationOutput(StrictModel):
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
    queue_s: float = Field(0.0, exclude=True)  # how long it waited for a decode slot (metrics only, not output)


class ClassificationOutput(StrictModel):
    label: str
    probabilities: dict[str, float]
    usage: Usage
