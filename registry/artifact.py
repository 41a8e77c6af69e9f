"""The on-disk form of one prompt version: a PEFT prompt-tuning adapter plus our manifest.

A version directory holds

* `adapter_model.safetensors` with the single key `prompt_embeddings`
  (`[num_virtual_tokens, token_dim]`, PEFT's own layout for causal LMs),
* `adapter_config.json`, a `PromptTuningConfig` written by PEFT's own dataclass,
* `promptmux.json`, the `PromptVersion` manifest (written last: it makes the version
  visible on object stores),

so `PeftModel.from_pretrained(base, version_dir)` loads it unchanged. Tensors are only
ever read through safetensors: no pickle, no `torch.load`.
"""

import hashlib
import json
import os

import torch
from peft import PromptTuningConfig, TaskType
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save as save_safetensors

from promptmux.registry.errors import IncompatiblePromptError, InvalidArtifactError
from promptmux.registry.layout import CONFIG_FILE, MANIFEST_FILE, TENSOR_FILE
from promptmux.registry.schemas import BaseModelFingerprint, PromptVersion

TENSOR_KEY = "prompt_embeddings"
SUPPORTED_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MAX_VIRTUAL_TOKENS = 4096
MAX_TENSOR_FILE_BYTES = 512 * 1024 * 1024


def validate_prompt_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Return a detached, contiguous CPU copy of a valid prompt tensor, or raise."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArtifactError(f"a soft prompt must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise InvalidArtifactError(
            f"a soft prompt must be 2-D [num_virtual_tokens, token_dim], got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise InvalidArtifactError(
            f"a soft prompt must be float32, bfloat16 or float16, got {str(tensor.dtype).removeprefix('torch.')}"
        )
    rows, cols = tensor.shape
    if not 1 <= rows <= MAX_VIRTUAL_TOKENS or cols < 1:
        raise InvalidArtifactError(
            f"a soft prompt needs 1..{MAX_VIRTUAL_TOKENS} virtual tokens and a positive token_dim, "
            f"got shape {tuple(tensor.shape)}"
        )
    tensor = tensor.detach().to("cpu").contiguous()
    if not torch.isfinite(tensor).all():
        raise InvalidArtifactError("a soft prompt must be finite: it contains NaN or Inf values")
    return tensor


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the raw bytes of a contiguous CPU tensor, in its own dtype."""
    return hashlib.sha256(tensor.view(torch.uint8).numpy().tobytes()).hexdigest()


def encode_tensor(tensor: torch.Tensor) -> bytes:
    return save_safetensors({TENSOR_KEY: tensor})


def decode_tensor(data: bytes, source: str) -> torch.Tensor:
    """Parse safetensors bytes holding a prompt; refuse anything else with a clear error."""
    _check_size(len(data), source)
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidArtifactError(f"{source}: not a readable safetensors file ({exc})") from exc
    return _prompt_from(tensors, source)


def read_tensor_file(path: str, source: str) -> torch.Tensor:
    """Like `decode_tensor` for a local file, memory-mapped by safetensors instead of read whole."""
    _check_size(os.path.getsize(path), source)
    try:
        tensors = load_safetensors_file(path)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidArtifactError(f"{source}: not a readable safetensors file ({exc})") from exc
    return _prompt_from(tensors, source)


def _check_size(size: int, source: str) -> None:
    if size > MAX_TENSOR_FILE_BYTES:
        raise InvalidArtifactError(f"{source}: {size} bytes is larger than any soft prompt")


def _prompt_from(tensors: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    if TENSOR_KEY not in tensors:
        raise InvalidArtifactError(f"{source}: no '{TENSOR_KEY}' tensor (found {sorted(tensors)})")
    return validate_prompt_tensor(tensors[TENSOR_KEY])


def dtype_name(tensor: torch.Tensor) -> str:
    return SUPPORTED_DTYPES[tensor.dtype]


def adapter_config(manifest: PromptVersion) -> bytes:
    """`adapter_config.json` from PEFT's own config class, so the installed PEFT accepts it.

    The init is recorded as RANDOM: the trained values are in the safetensors file, and
    a TEXT init would make PEFT want the tokenizer again on load. The real init method
    lives in our manifest.
    """
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=manifest.num_virtual_tokens,
        token_dim=manifest.token_dim,
        num_transformer_submodules=1,
        num_attention_heads=manifest.base_fingerprint.num_attention_heads,
        num_layers=manifest.base_fingerprint.num_layers,
        base_model_name_or_path=manifest.base_model,
        inference_mode=True,
    )
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str).encode()


def version_files(manifest: PromptVersion, tensor: torch.Tensor) -> dict[str, bytes]:
    """The files of a version directory, manifest last."""
    return {
        TENSOR_FILE: encode_tensor(tensor),
        CONFIG_FILE: adapter_config(manifest),
        MANIFEST_FILE: manifest.model_dump_json(indent=2).encode(),
    }


def check_fits(tensor: torch.Tensor, fingerprint: BaseModelFingerprint, expected: BaseModelFingerprint) -> None:
    """Refuse a prompt that was not made for the task's base model, saying what differs."""
    problem = expected.misfit(fingerprint, tensor.shape[1])
    if problem:
        raise IncompatiblePromptError(f"prompt does not fit the task's base model: {problem}")


PEFT_PROMPT_TYPES = {"PROMPT_TUNING": "imported-prompt-tuning", "P_TUNING": "imported-p-tuning"}


def parse_peft_config(data: bytes, source: str) -> dict:
    """Read a PEFT adapter config and check it is a causal-LM prompt we can serve."""
    try:
        config = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidArtifactError(f"{source}: adapter_config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidArtifactError(f"{source}: adapter_config.json must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type not in PEFT_PROMPT_TYPES:
        raise InvalidArtifactError(
            f"{source}: peft_type {peft_type!r} is not supported; promptmux imports PROMPT_TUNING and P_TUNING adapters"
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise InvalidArtifactError(f"{source}: task_type {config.get('task_type')!r} is not supported (CAUSAL_LM only)")
    if config.get("num_transformer_submodules", 1) not in (None, 1):
        raise InvalidArtifactError(f"{source}: adapters for encoder-decoder models are not supported")
    return config
