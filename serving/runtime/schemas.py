"""Requests as the runtime takes them: text checks, parameter overrides, and the offline
JSONL format (`TaskRequest` in, `TaskResult` out)."""

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from promptmux.core.errors import InvalidRequestError, describe
from promptmux.core.fields import GenerationParams
from promptmux.core.strict_model import StrictModel
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput


def _encodable(value: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`); no tokenizer or hash can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid Unicode: a lone surrogate at position {exc.start}") from exc
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class _Override(StrictModel):
    """Per-request decoding parameters; unset fields take the task's defaults."""

    def apply(self, defaults: GenerationParams) -> GenerationParams:
        try:
            return GenerationParams.model_validate({**defaults.model_dump(), **self.model_dump(exclude_none=True)})
        except ValidationError as exc:
            raise InvalidRequestError(describe(exc.errors(), "params")) from exc


def _optional(field: FieldInfo) -> tuple[object, FieldInfo]:
    """A field of `GenerationParams` as an override: its type and bounds, unset by default."""
    bounded = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return bounded | None, Field(None, description=field.description)


# Per-request decoding parameters: every field of `GenerationParams` (declared once, there),
# with its bounds, unset by default; unset fields take the task's defaults, and cross-field
# rules are checked on the merged result (`apply`).
ParamsOverride = create_model("ParamsOverride", __base__=_Override, __doc__=_Override.__doc__,
                              **{name: _optional(field) for name, field in GenerationParams.model_fields.items()})


class TaskRequest(StrictModel):
    """One input for one task; the version comes from `version`, else `alias`, else the
    task's rollout (sticky on `routing_key`), else its `production` alias, else the latest."""

    task: str
    input: Text
    version: int | None = Field(None, ge=1)
    alias: str | None = None
    routing_key: Text | None = Field(None, max_length=256)
    params: ParamsOverride = Field(default_factory=ParamsOverride)


class TaskResult(StrictModel):
    """One line of `promptmux generate` output: what was asked, what served it, what came out."""

    task: str
    input: str
    version: int | None = None
    variant: str | None = None
    kind: Literal["generation", "classification"] | None = None
    result: GenerationOutput | ClassificationOutput | None = None
    error: str | None = None
