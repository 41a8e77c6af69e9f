"""PEFT's prompt-learning methods for decoder-only models: what each stores, and what
serving needs from it, derived once per version.

| method (`peft_type`) | `adapter_model.safetensors` | served as |
|---|---|---|
| `PROMPT_TUNING` | `prompt_embeddings` [n, hidden] | a soft prompt |
| `P_TUNING` | `prompt_embeddings` [n, hidden]: the prompt encoder's output (MLP or LSTM); PEFT saves the output, not the encoder | a soft prompt |
| `MULTITASK_PROMPT_TUNING` | `prompt_embeddings` [n, hidden], `prefix_task_cols` [tasks, n, rank], `prefix_task_rows` [tasks, rank, hidden] | a soft prompt: the shared prompt times one task's cols @ rows (`task_id`) |
| `PREFIX_TUNING` | `prompt_embeddings` [n, layers × 2 × kv_heads × head_dim], after the projection where `prefix_projection` is set | each layer's keys and values: a pinned KV block |

A prefix is laid out as PEFT's `get_prompt` reads it: [n, layers·2, kv_heads, head_dim],
layer l's keys at 2l and values at 2l + 1, in the base model's own key/value-head layout
(PEFT sizes it by `num_key_value_heads` on grouped-query models: SmolLM2 has 3 KV heads
for 9 attention heads). The prefix keys are used as they are, as PEFT's cache does.
"""

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from promptmux.core.errors import IncompatiblePromptError, InvalidArtifactError
from promptmux.registry.limits import limits
from promptmux.registry.schemas import BaseModelFingerprint, KvShape, Method

PEFT_TYPES: dict[str, Method] = {
    "PROMPT_TUNING": "prompt_tuning", "P_TUNING": "p_tuning",
    "MULTITASK_PROMPT_TUNING": "multitask_prompt_tuning", "PREFIX_TUNING": "prefix_tuning",
}
SUPPORTED = "promptmux serves PROMPT_TUNING, P_TUNING, PREFIX_TUNING and MULTITASK_PROMPT_TUNING adapters of decoder-only models"
EMBEDDINGS = "prompt_embeddings"
TASK_COLS, TASK_ROWS = "prefix_task_cols", "prefix_task_rows"
SUPPORTED_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MAX_VIRTUAL_TOKENS = 4096


def parse_config(data: bytes, source: str) -> dict[str, Any]:
    """Read a PEFT adapter config and check it is a prompt-learning method of a causal LM."""
    try:
        config = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidArtifactError(f"{source}: adapter_config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidArtifactError(f"{source}: adapter_config.json must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise InvalidArtifactError(f"{source}: peft_type {peft_type!r} is not supported; {SUPPORTED}")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise InvalidArtifactError(f"{source}: task_type {config.get('task_type')!r} is not supported; {SUPPORTED}")
    if config.get("num_transformer_submodules", 1) not in (None, 1):
        raise InvalidArtifactError(f"{source}: adapters for encoder-decoder models are not supported; {SUPPORTED}")
    return config


@dataclass
class Prompt:
    """A version's tensors with what they mean: its method, its PEFT config and, for a
    multitask prompt, the task it serves. Imported adapters keep their files' bytes, so a
    version is the adapter PEFT wrote."""

    method: Method
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

    def kv_shape(self) -> KvShape | None:
        """A prefix's per-layer key/value shape, as its config declares it."""
        if self.method != "prefix_tuning":
            return None
        heads, width = self.peft_config.get("num_attention_heads"), self.peft_config.get("token_dim")
        layers = self.peft_config.get("num_layers")
        if not all(isinstance(v, int) and v > 0 for v in (heads, width, layers)) or width % heads:
            raise InvalidArtifactError(f"prefix config needs positive num_layers, num_attention_heads and a token_dim "
                                       f"they divide (got {layers}, {heads}, {width})")
        return KvShape(layers=layers, kv_heads=heads, head_dim=width // heads)


def prompt_tensors(tensors: dict[str, torch.Tensor], method: Method, source: str) -> dict[str, torch.Tensor]:
    """The method's tensors, each a detached, contiguous CPU copy, floating point, finite and
    within the size limits; anything else is refused, saying what."""
    expected = {EMBEDDINGS, TASK_COLS, TASK_ROWS} if method == "multitask_prompt_tuning" else {EMBEDDINGS}
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


def check_consistent(prompt: Prompt, source: str) -> None:
    """Refuse a prompt whose config disagrees with its tensors (its method, its sizes, its task)."""
    embeddings, config = prompt.embeddings, prompt.peft_config
    declared = config.get("num_virtual_tokens")
    if declared is not None and declared != embeddings.shape[0]:
        raise InvalidArtifactError(f"{source}: adapter_config says {declared} virtual tokens but "
                                   f"{EMBEDDINGS} has {embeddings.shape[0]}")
    if prompt.method == "prefix_tuning":
        shape = prompt.kv_shape()
        assert shape is not None  # a prefix always has one
        if embeddings.shape[1] != shape.width:
            raise InvalidArtifactError(f"{source}: a prefix of {shape.layers} layers x 2 x {shape.kv_heads} KV heads x "
                                       f"{shape.head_dim} is {shape.width} wide, but {EMBEDDINGS} is {embeddings.shape[1]}")
        return
    if config.get("token_dim") not in (None, embeddings.shape[1]):
        raise InvalidArtifactError(f"{source}: adapter_config says token_dim {config['token_dim']} but {EMBEDDINGS} "
                                   f"is {tuple(embeddings.shape)}")
    if prompt.method == "multitask_prompt_tuning":
        _check_multitask(prompt, source)


def check_fits(prompt: Prompt, model: BaseModelFingerprint, source: str) -> None:
    """Refuse a (consistent) prompt that does not fit `model`, saying what differs: its width
    against the hidden size, or a prefix's layers, KV heads and head size."""
    if prompt.method != "prefix_tuning":
        if prompt.embeddings.shape[1] != model.hidden_size:
            raise IncompatiblePromptError(f"{source}: token_dim {prompt.embeddings.shape[1]} != base model hidden_size "
                                          f"{model.hidden_size}")
        return
    shape, expected = prompt.kv_shape(), model.kv_shape()
    if shape != expected:
        differs = [f"{what} {mine} != {theirs}" for what, mine, theirs in
                   (("layers", shape.layers, expected.layers), ("KV heads", shape.kv_heads, expected.kv_heads),
                    ("head size", shape.head_dim, expected.head_dim)) if mine != theirs]
        raise IncompatiblePromptError(f"{source}: the prefix does not fit the base model's keys and values: "
                                      + ", ".join(differs))


def _check_multitask(prompt: Prompt, source: str) -> None:
    n, hidden = prompt.embeddings.shape
    cols, rows = prompt.tensors[TASK_COLS], prompt.tensors[TASK_ROWS]
    if cols.dim() != 3 or rows.dim() != 3 or cols.shape[0] != rows.shape[0] or cols.shape[1] != n \
            or rows.shape[2] != hidden or cols.shape[2] != rows.shape[1]:
        raise InvalidArtifactError(f"{source}: {TASK_COLS} {tuple(cols.shape)} and {TASK_ROWS} {tuple(rows.shape)} "
                                   f"do not fit {EMBEDDINGS} {tuple(prompt.embeddings.shape)} as [tasks, n, rank] and "
                                   "[tasks, rank, hidden]")
    tasks, rank = cols.shape[0], cols.shape[2]
    declared = {"num_tasks": prompt.peft_config.get("num_tasks", 1), "num_ranks": prompt.peft_config.get("num_ranks", 1)}
    for name, size in (("num_tasks", tasks), ("num_ranks", rank)):
        if declared[name] != size:  # PEFT builds its parameters from the config: loading these tensors fails
            raise InvalidArtifactError(f"{source}: adapter_config says {name} {declared[name]} but {TASK_COLS} is "
                                       f"{tuple(cols.shape)} ([tasks, n, rank]): PEFT cannot load it")
    if prompt.task_id is None or not 0 <= prompt.task_id < tasks:
        raise InvalidArtifactError(f"{source}: a multitask prompt of {tasks} tasks serves one of them: choose it with "
                                   f"--task-id 0..{tasks - 1} (got {prompt.task_id})")


@dataclass
class ServingForm:
    """What serving needs of a version, float32 on the CPU: a soft prompt's embeddings, or a
    prefix's keys and values per layer ([kv_heads, n, head_dim] each)."""

    embeds: torch.Tensor | None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeds.shape[0] if self.embeds is not None else self.kv[0][0].shape[1]


def serving_form(prompt: Prompt) -> ServingForm:
    """Derive, once per version, what the engine batches (see the module docstring)."""
    embeddings = prompt.embeddings.float()
    if prompt.method == "multitask_prompt_tuning":
        t = prompt.task_id
        return ServingForm(embeddings * (prompt.tensors[TASK_COLS][t].float() @ prompt.tensors[TASK_ROWS][t].float()), None)
    if prompt.method != "prefix_tuning":
        return ServingForm(embeddings, None)
    shape = prompt.kv_shape()
    assert shape is not None
    n = embeddings.shape[0]
    kv = embeddings.view(n, shape.layers * 2, shape.kv_heads, shape.head_dim).permute(1, 2, 0, 3)
    return ServingForm(None, [(kv[2 * layer].contiguous(), kv[2 * layer + 1].contiguous()) for layer in range(shape.layers)])
