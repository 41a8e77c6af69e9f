"""HTTP request and response bodies (the OpenAPI schema of the serving API)."""

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from promptmux.core.errors import InvalidRequestError
from promptmux.core.fields import Logprobs, MaxNewTokens, Message, Seed, StopStrings, Temperature, TopP
from promptmux.core.strict_model import StrictModel, exactly_one, needs
from promptmux.core.usage import Usage
from promptmux.registry.names import parse_version
from promptmux.serving.runtime.requests import Call, Query
from promptmux.serving.runtime.schemas import ParamsOverride, Text
from promptmux.serving.runtime.tenants import Caller


class TaskBody(StrictModel):
    task: Text = Field(min_length=1, max_length=64)
    input: Text | None = None
    inputs: list[Text] | None = Field(None, min_length=1)
    version: int | None = Field(None, ge=1)
    alias: Text | None = Field(None, min_length=1, max_length=64)
    routing_key: Text | None = Field(None, max_length=256, description="sticky A/B assignment key")

    @model_validator(mode="after")
    def _one_of_input_inputs(self) -> "TaskBody":
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'input' or 'inputs'")
        return self

    def query(self) -> Query:
        texts = [self.input] if self.input is not None else list(self.inputs or [])
        return Query(self.task, texts, self.version, self.alias, self.routing_key)


class GenerateBody(TaskBody):
    params: ParamsOverride = Field(default_factory=ParamsOverride)
    stream: bool = False


class ClassifyBody(TaskBody):
    pass


class ServedOutput(BaseModel):
    """An output and who served it (the runtime's `ServedBy`, on the wire) with its feedback id."""

    id: str = Field(description="send feedback on this output with it: POST /v1/feedback")
    task: str
    version: int
    variant: str


class GenerateOutput(ServedOutput):
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage


class ClassifyOutput(ServedOutput):
    index: int
    label: str
    probabilities: dict[str, float]
    usage: Usage


class GenerateResponse(BaseModel):
    outputs: list[GenerateOutput]


class ClassifyResponse(BaseModel):
    outputs: list[ClassifyOutput]


class FeedbackBody(StrictModel):
    """An outcome for one served output: a score in [0, 1], or for a classification the gold label."""

    id: Text = Field(min_length=1, max_length=1024, description="the output's id, from its response")
    score: float | None = Field(None, ge=0.0, le=1.0)
    label: Text | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one_of_score_label(self) -> "FeedbackBody":
        exactly_one(self.score, self.label, "give exactly one of 'score' or 'label'")
        return self


class FeedbackResponse(BaseModel):
    counted: bool = Field(description="false when this output's feedback had been counted already")


# OpenAI fields promptmux does not implement, with the values that ask for nothing: a client
# that sends one of these (LangChain sends several by default) is served; any other value is
# refused with 400 naming the field, never silently ignored.
UNSUPPORTED_OPENAI_FIELDS: dict[str, tuple] = {
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
}
UNSUPPORTED_COMPLETION_FIELDS: dict[str, tuple] = {**UNSUPPORTED_OPENAI_FIELDS, "suffix": (None, "")}
UNSUPPORTED_CHAT_FIELDS: dict[str, tuple] = {
    **UNSUPPORTED_OPENAI_FIELDS, "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}), "parallel_tool_calls": (None,),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,),
}


def refuse_unsupported(data: object, unsupported: dict[str, tuple]) -> object:
    """`data` without the unsupported fields that carry a neutral value; any other value of
    one is refused, naming the field."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, neutral in unsupported.items():
        if name in data and data.pop(name) not in neutral:
            raise ValueError(f"{name} is not supported by promptmux (leave it unset)")
    return data


def parse_model(model: str) -> tuple[str, int | None, str | None]:
    """OpenAI `model` → (task, version, alias): `task`, `task@3` or `task:staging`."""
    if "@" in model:
        task, _, version = model.partition("@")
        number = parse_version(version)
        if number is None:
            raise InvalidRequestError(f"invalid model {model!r}: expected task@VERSION with a positive integer (ASCII digits)")
        return task, number, None
    task, colon, alias = model.partition(":")
    if colon and not alias:
        raise InvalidRequestError(f"invalid model {model!r}: expected task:ALIAS with an alias after the colon")
    return task, None, alias or None


class StreamOptions(StrictModel):
    include_usage: bool = False


class OpenAIBody(StrictModel):
    """What OpenAI's completions and chat completions share: `model` is `task`, `task@3` or
    `task:alias`, `user` the routing key. Fields it does not know, and supported ones with
    values it cannot honour, are refused."""

    model: Text = Field(min_length=1, max_length=140)
    max_tokens: MaxNewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Annotated[Text, Field(min_length=1, max_length=256)] | StopStrings | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=256)

    def params(self, tokens: int | None = None, logprobs: int | None = None) -> ParamsOverride:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return ParamsOverride(max_new_tokens=tokens or self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=stop, seed=self.seed, logprobs=logprobs)

    unsupported: ClassVar[dict[str, tuple]] = {}  # each OpenAI body's fields promptmux takes only with a neutral value

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: object) -> object:
        return refuse_unsupported(data, cls.unsupported)

    @property
    def usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "OpenAIBody":
        needs(self.stream_options, self.stream, "stream_options is only allowed when stream is true (as OpenAI has it)")
        return self

    def query(self, inputs: list) -> Query:
        task, version, alias = parse_model(self.model)
        return Query(task, inputs, version, alias, self.user)


class CompletionBody(OpenAIBody):
    """OpenAI `POST /v1/completions`."""

    prompt: Text | Annotated[list[Text], Field(min_length=1)]
    n: int = Field(1, ge=1, le=16, description="choices per prompt, each a row of its own (seed + i when sampling "
                   "with a seed)")
    echo: bool = Field(False, description="each choice's text begins with its prompt")
    logprobs: Logprobs | None = None
    best_of: Literal[1] | None = None

    unsupported: ClassVar[dict[str, tuple]] = UNSUPPORTED_COMPLETION_FIELDS

    @model_validator(mode="after")
    def _echo_alone(self) -> "CompletionBody":
        if self.echo and self.stream:
            raise ValueError("echo with stream is not supported: the prompt is the text you sent")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported: promptmux gives no log-probabilities of the prompt")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def call(self, caller: Caller) -> Call:
        """Each prompt's `n` choices are `n` rows of it, in OpenAI's order (prompt i's are i*n..i*n+n-1)."""
        inputs = [prompt for prompt in self.prompts for _ in range(self.n)]
        return Call(self.query(inputs), "completions", params=self.params(logprobs=self.logprobs), tokens_field="max_tokens",
                    stream=self.stream, choices=self.n, caller=caller)


class ContentPart(StrictModel):
    type: Literal["text"]
    text: Text


class ChatMessage(StrictModel):
    """An OpenAI chat message: a role and text content (a string, or text parts); a
    `developer` message is a system message. Tool calls are refused; their fields set to
    null (as replayed assistant messages carry them) are accepted."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart]
    name: Text | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _refuse_tools(cls, data: object) -> object:
        return refuse_unsupported(data, {"tool_calls": (None, []), "function_call": (None,), "refusal": (None,),
                                         "audio": (None,), "tool_call_id": (None,)})

    def message(self) -> Message:
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return Message(role="system" if self.role == "developer" else self.role, content=content)


class ChatBody(OpenAIBody):
    """OpenAI `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: MaxNewTokens | None = None
    n: int = Field(1, ge=1, le=16, description="choices, each a row of its own (seed + i when sampling with a seed)")
    logprobs: bool = False
    top_logprobs: Logprobs | None = None

    unsupported: ClassVar[dict[str, tuple]] = UNSUPPORTED_CHAT_FIELDS

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatBody":
        needs(self.top_logprobs, self.logprobs, "top_logprobs needs logprobs: true")
        return self

    @property
    def tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def call(self, caller: Caller) -> Call:
        """`n` choices are `n` rows of the one conversation."""
        params = self.params(self.max_completion_tokens, (self.top_logprobs or 0) if self.logprobs else None)
        return Call(self.query([[m.message() for m in self.messages]] * self.n), "chat", params=params,
                    tokens_field=self.tokens_field, stream=self.stream, conversation=True, choices=self.n, caller=caller)
