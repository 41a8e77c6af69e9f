"""Pydantic schemas of everything the registry stores or hands out.

These are the on-disk formats (`task.json`, `promptmux.json`, alias and rollout files)
and the objects the serving runtime and the task scripts exchange with the registry.
"""

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from promptmux.core.clock import utc_now
from promptmux.core.errors import InvalidConversationError
from promptmux.core.fields import GenerationParams, Message
from promptmux.core.strict_model import StrictModel
from promptmux.methods.catalog import Method
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry.names import TaskName, validate_name

INPUT_PLACEHOLDER = "{input}"


class TaskKind(str, Enum):
    classification = "classification"
    generation = "generation"


class TaskSpec(StrictModel):
    """What a task is: how inputs are templated, what it outputs, which base model it runs on."""

    name: TaskName
    kind: TaskKind = TaskKind.generation
    format: Literal["text", "chat"] = Field(
        "text", description="text: the template is the model input; chat: the template is the user message, rendered "
        "with the base model's own chat template and its generation prompt")
    system: str | None = Field(None, description="chat: the system message before the conversation")
    template: str = Field(INPUT_PLACEHOLDER, description="input template, e.g. 'Comment: {input}\\nSatisfaction:\\n'")
    labels: dict[str, str] = Field(default_factory=dict, description="label -> verbalizer string (classification)")
    generation: GenerationParams = Field(default_factory=GenerationParams)
    base_model: str
    description: str = ""

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if INPUT_PLACEHOLDER not in value:
            raise ValueError(f"template must contain {INPUT_PLACEHOLDER}")
        return value

    @model_validator(mode="after")
    def _system_needs_chat(self) -> "TaskSpec":
        if self.system is not None and self.format != "chat":
            raise ValueError("a system message needs format chat")
        return self

    @model_validator(mode="after")
    def _labels_match_kind(self) -> "TaskSpec":
        if self.kind is TaskKind.classification:
            if len(self.labels) < 2:
                raise ValueError("a classification task needs at least two labels")
            if any(not verbalizer for verbalizer in self.labels.values()):
                raise ValueError("every label needs a non-empty verbalizer string")
        elif self.labels:
            raise ValueError("labels are only meaningful for classification tasks")
        return self

    def render(self, text: str) -> str:
        """The model input for one request (plain substitution: braces in inputs are safe); for
        a chat-format task, the user message."""
        return self.template.replace(INPUT_PLACEHOLDER, text)

    def conversation(self, messages: list[Message]) -> list[Message]:
        """What a chat-format task renders through the chat template: the task's system
        message unless the conversation brings its own, then the conversation with its last
        user message framed by the template (what the task was trained on)."""
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not users:
            raise InvalidConversationError("a conversation needs a user message")
        last = users[-1]
        framed = [m if i != last else Message(role="user", content=self.render(m.content)) for i, m in enumerate(messages)]
        if self.system is not None and all(m.role != "system" for m in messages):
            framed.insert(0, Message(role="system", content=self.system))
        return framed


class TaskRecord(StrictModel):
    """`task.json`: the spec plus the fingerprint of the base model every version must fit."""

    spec: TaskSpec
    base_fingerprint: BaseModelFingerprint
    created_at: datetime = Field(default_factory=utc_now)


class ExportedTask(StrictModel):
    """`promptmux-task.json` in an exported version's folder: the task's spec and where the
    version came from, so that an import into another registry recreates the task as it was."""

    spec: TaskSpec
    registry: str = Field(description="the registry it was exported from")
    task: str
    version: int = Field(ge=1)

    def lineage(self) -> dict[str, Any]:
        return {"registry": self.registry, "task": self.task, "version": self.version}


class PromptVersion(StrictModel):
    """`promptmux.json`: the manifest of one immutable prompt version."""

    task: str
    version: int = Field(ge=1)
    method: Method = Field("prompt_tuning", description="the PEFT prompt-learning method it was made with")
    task_id: int | None = Field(None, ge=0, description="multitask prompt tuning: the task of the adapter it serves")
    num_virtual_tokens: int = Field(ge=1)
    token_dim: int = Field(ge=1, description="the width of prompt_embeddings (a prefix: layers x 2 x KV heads x head size)")
    dtype: str
    base_model: str
    base_fingerprint: BaseModelFingerprint
    init_method: str = "random"
    init_text: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    parent_version: int | None = None
    created_at: datetime = Field(default_factory=utc_now)
    note: str = ""
    sha256: str = Field(description="sha256 of the raw tensor bytes (row-major, stored dtype): prompt_embeddings, "
                        "then any other tensor by name")


class AliasRecord(StrictModel):
    version: int = Field(ge=1)
    previous: int | None = Field(
        None, ge=1, description="the version the alias pointed at before its last move: servers fall back to it, "
        "declared as such, while `version` fails validation"
    )
    updated_at: datetime = Field(default_factory=utc_now)


class RolloutVariant(StrictModel):
    version: int = Field(ge=1)
    weight: float = Field(gt=0)
    name: str = ""

    @model_validator(mode="after")
    def _default_name(self) -> "RolloutVariant":
        self.name = validate_name(self.name or f"v{self.version}", "variant name")
        return self


class RolloutSpec(StrictModel):
    """A weighted split of a task's traffic between versions.

    With `sticky`, a request's routing key is hashed to pick its variant, so the same key
    always lands on the same variant while the split is unchanged.
    """

    variants: list[RolloutVariant] = Field(min_length=1, max_length=16)
    sticky: bool = True
    experiment: str | None = Field(None, max_length=64, description="the automatic rollout this split belongs to: "
                                   "the router stamps the requests it assigns with it")
    updated_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _distinct(self) -> "RolloutSpec":
        versions = [variant.version for variant in self.variants]
        if len(set(versions)) != len(versions):
            raise ValueError("each version may appear in a rollout only once")
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be distinct")
        return self


class VersionView(StrictModel):
    """What `registry show` and the serving API report about a version."""

    manifest: PromptVersion
    aliases: list[str]
    archived: bool
    uri: str


class TaskView(StrictModel):
    spec: TaskSpec
    base_fingerprint: BaseModelFingerprint
    versions: list[VersionView]
    aliases: dict[str, int]
    rollout: RolloutSpec | None

