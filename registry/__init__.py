"""The registry: records and their storage on any fsspec URL — tasks, versioned soft prompts
(PEFT adapters), aliases, rollouts, outcomes, tenants and traffic. No tensor code."""

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
