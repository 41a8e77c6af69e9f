"""HTTP request and response bodies (the OpenAPI schema of the serving API)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from promptmux.registry.schemas import MaxNewTokens, Seed, StopStrings, StrictModel, Temperature, TopP
from promptmux.serving.engine.outputs import Usage
from promptmux.serving.runtime.requests import Query
from promptmux.serving.runtime.schemas import ParamsOverride, Text


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


class Served(BaseModel):
    id: str = Field(description="send feedback on this output with it: POST /v1/feedback")
    task: str
    version: int
    variant: str


class GenerateOutput(Served):
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage


class ClassifyOutput(Served):
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
        if (self.score is None) == (self.label is None):
            raise ValueError("give exactly one of 'score' or 'label'")
        return self


class FeedbackResponse(BaseModel):
    counted: bool = Field(description="false when this output's feedback had been counted already")


# OpenAI fields promptmux does not implement, with the values that ask for nothing: a client
# that sends one of these (LangChain sends several by default) is served; any other value is
# refused with 400 naming the field, never silently ignored.
UNSUPPORTED_OPENAI_FIELDS: dict[str, tuple] = {
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "suffix": (None, ""),
    "stream_options": (None,),
}


class CompletionBody(StrictModel):
    """OpenAI `POST /v1/completions`; `model` is `task`, `task@3` or `task:alias`, `user` the routing key.
    Fields it does not know, and supported ones with values it cannot honour, are refused."""

    model: Text = Field(min_length=1, max_length=140)
    prompt: Text | Annotated[list[Text], Field(min_length=1)]
    max_tokens: MaxNewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Annotated[Text, Field(min_length=1, max_length=256)] | StopStrings | None = None
    seed: Seed | None = None
    stream: bool = False
    user: Text | None = Field(None, max_length=256)
    n: Literal[1] = 1
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, neutral in UNSUPPORTED_OPENAI_FIELDS.items():
            if name in data and data.pop(name) not in neutral:
                raise ValueError(f"{name} is not supported by promptmux (leave it unset)")
        return data

    def params(self) -> ParamsOverride:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return ParamsOverride(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=stop, seed=self.seed)
