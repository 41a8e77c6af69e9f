"""The fields a request to serve is made of, declared once: a task's decoding defaults
(`GenerationParams`, stored in the registry) and every request's overrides
(`promptmux.serving.runtime.schemas.ParamsOverride`) share these types and bounds.

The bounds are what the sampler can compute with: a temperature or repetition penalty near
zero turns logits into infinities, and torch seeds are 64-bit.
"""

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from promptmux.core.defaults import MIN_REPETITION_PENALTY, MIN_TEMPERATURE, TOKENS_CAP
from promptmux.core.strict_model import StrictModel


def _zero_or_usable(value: float) -> float:
    if 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    return value


MaxNewTokens = Annotated[int, Field(ge=1, le=TOKENS_CAP)]
MinNewTokens = Annotated[int, Field(ge=0, le=TOKENS_CAP, description="EOS is suppressed until this many tokens")]
Temperature = Annotated[float, Field(ge=0.0, le=10.0, description=f"0 means greedy decoding; else at least {MIN_TEMPERATURE}"),
                        AfterValidator(_zero_or_usable)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0, le=1_000_000, description="0 disables top-k filtering")]
RepetitionPenalty = Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=10.0)]
StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=16)]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1, description="sampling seed (64-bit unsigned)")]
Logprobs = Annotated[int, Field(ge=0, le=5, description="return each generated token's log-probability with its N most "
                                "likely alternatives (0..5)")]


class GenerationParams(StrictModel):
    """Decoding parameters; a task carries defaults and a request may override them."""

    max_new_tokens: MaxNewTokens = 32
    min_new_tokens: MinNewTokens = 0
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0
    stop: StopStrings = Field(default_factory=list)
    seed: Seed | None = None
    logprobs: Logprobs | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "GenerationParams":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        return self


class Message(StrictModel):
    """One turn of a conversation, as chat templates take it."""

    role: Literal["system", "user", "assistant"]
    content: str


Input = str | list[Message]  # a request's input: a text, or a conversation (chat-format tasks)
