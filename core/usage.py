"""Token usage, one definition for every room: the engine counts it, the runtime and the HTTP
bodies answer with it."""

from promptmux.core.strict_model import StrictModel


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
