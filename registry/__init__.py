"""promptmux registry: versioned soft prompts per task, stored as PEFT adapters."""

from promptmux.registry.registry import Registry, VerifyResult, default_registry_uri
from promptmux.registry.schemas import PromptVersion, RolloutSpec, RolloutVariant, TaskKind, TaskRecord, TaskSpec

__all__ = [
    "PromptVersion",
    "Registry",
    "RolloutSpec",
    "RolloutVariant",
    "TaskKind",
    "TaskRecord",
    "TaskSpec",
    "VerifyResult",
    "default_registry_uri",
]
