"""promptmux registry: versioned soft prompts per task, stored as PEFT adapters."""

from promptmux.registry.errors import (
    ConflictError,
    CorruptFileError,
    IncompatiblePromptError,
    InvalidArtifactError,
    InvalidNameError,
    NotFoundError,
    PromptmuxError,
    StorageError,
)
from promptmux.registry.registry import Registry, VerifyResult, default_registry_uri
from promptmux.registry.schemas import (
    BaseModelFingerprint,
    GenerationParams,
    PromptVersion,
    RolloutSpec,
    RolloutVariant,
    TaskKind,
    TaskRecord,
    TaskSpec,
)

__all__ = [
    "BaseModelFingerprint",
    "ConflictError",
    "CorruptFileError",
    "GenerationParams",
    "IncompatiblePromptError",
    "InvalidArtifactError",
    "InvalidNameError",
    "NotFoundError",
    "PromptVersion",
    "PromptmuxError",
    "Registry",
    "RolloutSpec",
    "RolloutVariant",
    "StorageError",
    "TaskKind",
    "TaskRecord",
    "TaskSpec",
    "VerifyResult",
    "default_registry_uri",
]
