"""Requests and results of the engine (also the offline JSONL format)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.schemas import GenerationParams


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamsOverride(_Schema):
    """Per-request decoding parameters; unset fields take the task's defaults."""

    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    min_new_tokens: int | None = Field(None, ge=0, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=10.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: list[str] | None = Field(None, max_length=16)
    seed: int | None = None

    def apply(self, defaults: GenerationParams) -> GenerationParams:
        return defaults.model_copy(update=self.model_dump(exclude_none=True))


class TaskRequest(_Schema):
    """One input for one task; the version comes from `version`, else `alias`, else the
    task's rollout (sticky on `routing_key`), else its `production` alias, else the latest."""

    task: str
    input: str
    version: int | None = Field(None, ge=1)
    alias: str | None = None
    routing_key: str | None = Field(None, max_length=256)
    params: ParamsOverride = Field(default_factory=ParamsOverride)


class Usage(_Schema):
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


class GenerationOutput(_Schema):
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    usage: Usage


class ClassificationOutput(_Schema):
    label: str
    probabilities: dict[str, float]
    usage: Usage


class TaskResult(_Schema):
    """One line of `promptmux generate` output: what was asked, what served it, what came out."""

    task: str
    input: str
    version: int | None = None
    variant: str | None = None
    kind: Literal["generation", "classification"] | None = None
    result: GenerationOutput | ClassificationOutput | None = None
    error: str | None = None
