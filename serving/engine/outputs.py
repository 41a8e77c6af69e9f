"""What the engine returns for a row: generated text and tokens, or a label, with token usage."""

from typing import Literal

from promptmux.registry.schemas import StrictModel


class Usage(StrictModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    virtual_tokens: int

    @classmethod
    def count(cls, prompt_tokens: int, completion_tokens: int, virtual_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            virtual_tokens=virtual_tokens,
        )


class GenerationOutput(StrictModel):
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    usage: Usage


class ClassificationOutput(StrictModel):
    label: str
    probabilities: dict[str, float]
    usage: Usage
