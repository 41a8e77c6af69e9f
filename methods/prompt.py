"""A version's tensors with what they mean, checked the same way for every method, and the
form a method serves in.

| method (`peft_type`) | `adapter_model.safetensors` | served as |
|---|---|---|
| `PROMPT_TUNING` | `prompt_embeddings` [n, hidden] | a soft prompt |
| `P_TUNING` | `prompt_embeddings` [n, hidden]: the prompt encoder's output | a soft prompt |
| `MULTITASK_PROMPT_TUNING` | `prompt_embeddings`, `prefix_task_cols`, `prefix_task_rows` | a soft prompt for one task |
| `PREFIX_TUNING` | `prompt_embeddings` [n, layers × 2 × kv_heads × head_dim] | each layer's keys and values: a pinned KV block |

Each method's own module says more (`prompt_tuning.py`, `p_tuning.py`, ...).
"""

from dataclasses import dataclass, field
from typing import Any

import torch

from promptmux.core.errors import InvalidArtifactError
from promptmux.core.limits import limits

EMBEDDINGS = "prompt_embeddings"
SUPPORTED_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MAX_VIRTUAL_TOKENS = 4096


@dataclass
class Prompt:
    """A version's tensors with what they mean: its method, its PEFT config and, for a
    multitask prompt, the task it serves. Imported adapters keep their files' bytes, so a
    version is the adapter PEFT wrote."""

    method: str  # a name of the catalog (`catalog.py`)
    tensors: dict[str, torch.Tensor]
    peft_config: dict[str, Any] = field(default_factory=dict)
    task_id: int | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes, kept verbatim

    @property
    def embeddings(self) -> torch.Tensor:
        return self.tensors[EMBEDDINGS]

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]


PromptLike = torch.Tensor | Prompt  # what the registry takes: a soft prompt's bare tensor, or any method's prompt


@dataclass
class ServingForm:
    """What serving needs of a version, float32 on the CPU: a soft prompt's embeddings, or a
    prefix's keys and values per layer ([kv_heads, n, head_dim] each)."""

    embeds: torch.Tensor | None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeds.shape[0] if self.embeds is not None else self.kv[0][0].shape[1]


def prompt_tensors(tensors: dict[str, torch.Tensor], expected: set[str], method: str, source: str) -> dict[str, torch.Tensor]:
    """The method's tensors (`expected`), each a detached, contiguous CPU copy, floating point,
    finite and within the size limits; anything else is refused, saying what."""
    if set(tensors) != expected:
        raise InvalidArtifactError(f"{source}: a {method} adapter holds {sorted(expected)}, found {sorted(tensors)}")
    checked = {name: _checked(name, tensor, source) for name, tensor in tensors.items()}
    limits().check_file("tensor_bytes", sum(t.numel() * t.element_size() for t in checked.values()), f"{source}: its tensors")
    rows = checked[EMBEDDINGS].shape[0]
    if checked[EMBEDDINGS].dim() != 2 or not 1 <= rows <= MAX_VIRTUAL_TOKENS or checked[EMBEDDINGS].shape[1] < 1:
        raise InvalidArtifactError(f"{source}: a soft prompt must be 2-D [num_virtual_tokens, width] with "
                                   f"1..{MAX_VIRTUAL_TOKENS} virtual tokens, got shape {tuple(checked[EMBEDDINGS].shape)}")
    return checked


def _checked(name: str, tensor: object, source: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArtifactError(f"{source}: {name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise InvalidArtifactError(f"{source}: {name} must be float32, bfloat16 or float16, got "
                                   f"{str(tensor.dtype).removeprefix('torch.')}")
    tensor = tensor.detach().to("cpu").contiguous()
    if not torch.isfinite(tensor).all():
        raise InvalidArtifactError(f"{source}: {name} must be finite: it contains NaN or Inf values")
    return tensor
