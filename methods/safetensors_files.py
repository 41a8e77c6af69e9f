"""A prompt as PEFT adapter files, and back.

An adapter folder holds

* `adapter_model.safetensors`: the method's tensors under PEFT's own keys
  (`prompt_embeddings`, and for multitask prompt tuning `prefix_task_cols` and
  `prefix_task_rows`; each method's module says what it stores),
* `adapter_config.json`: the method's PEFT config (written by PEFT's own config class, or,
  for an imported adapter, kept byte for byte as PEFT wrote it),

so `PeftModel.from_pretrained(base, folder)` loads it unchanged (the registry adds its
manifest beside them). Tensors are only ever read through safetensors: no pickle, no `torch.load`.
"""

import hashlib
import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save as save_safetensors

from promptmux.core.errors import InvalidArtifactError
from promptmux.core.limits import limits
from promptmux.methods.files import CONFIG_FILE, TENSOR_FILE
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.methods.prompt import EMBEDDINGS, SUPPORTED_DTYPES, Prompt


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the raw bytes of `prompt_embeddings`, then of every other tensor by name (so a
    plain soft prompt's digest is that of its one tensor)."""
    digest = hashlib.sha256(_raw(tensors[EMBEDDINGS]))
    for name in sorted(set(tensors) - {EMBEDDINGS}):
        digest.update(name.encode())
        digest.update(_raw(tensors[name]))
    return digest.hexdigest()


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def decode_tensors(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; refuse anything else with a clear error."""
    _check_size(len(data), source)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidArtifactError(f"{source}: not a readable safetensors file ({exc})") from exc


def read_tensor_file(path: str, source: str) -> dict[str, torch.Tensor]:
    """Like `decode_tensors` for a local file, memory-mapped by safetensors instead of read whole."""
    _check_size(os.path.getsize(path), source)
    try:
        return load_safetensors_file(path)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidArtifactError(f"{source}: not a readable safetensors file ({exc})") from exc


def _check_size(size: int, source: str) -> None:
    limits().check_file("tensor_bytes", size, source)


def dtype_name(tensor: torch.Tensor) -> str:
    return SUPPORTED_DTYPES[tensor.dtype]


def adapter_config(prompt: Prompt, base_model: str, model: BaseModelFingerprint) -> bytes:
    """`adapter_config.json`: the adapter's own bytes when it was imported, the config PEFT
    trained it with otherwise, or for a bare tensor a `PromptTuningConfig` from PEFT's own
    class, so the installed PEFT accepts it. A bare tensor's init is recorded as RANDOM: the
    trained values are in the safetensors file, and a TEXT init would make PEFT want the
    tokenizer again on load. The real init method lives in the registry's manifest."""
    if CONFIG_FILE in prompt.files:
        return prompt.files[CONFIG_FILE]
    if prompt.peft_config:
        config = {**prompt.peft_config, "inference_mode": True, "base_model_name_or_path": base_model}
        return json.dumps(config, indent=2, sort_keys=True, default=str).encode()
    from peft import PromptTuningConfig, TaskType  # here only: reading, verifying and exporting never pay for it

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=prompt.num_virtual_tokens,
        token_dim=prompt.embeddings.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=model.num_attention_heads,
        num_layers=model.num_layers,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str).encode()


def adapter_files(prompt: Prompt, base_model: str, model: BaseModelFingerprint) -> dict[str, bytes]:
    """The files of a PEFT adapter folder; an imported adapter's files verbatim."""
    return {
        TENSOR_FILE: prompt.files.get(TENSOR_FILE) or save_safetensors(prompt.tensors),
        CONFIG_FILE: adapter_config(prompt, base_model, model),
    }
