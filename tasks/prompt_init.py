"""Initial soft prompts, made by PEFT's own prompt-tuning initialisers.

A fresh `PromptTuningConfig` on the base model gives exactly the tensor PEFT training
would start from (`random`, `text` from an init text, or `sample-vocab`).
"""

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import PreTrainedModel

from registry.base_models import resolve_model_path

INIT_METHODS = {"random": PromptTuningInit.RANDOM, "text": PromptTuningInit.TEXT, "sample-vocab": PromptTuningInit.SAMPLE_VOCAB}


def prompt_config(
    base_model: str, num_virtual_tokens: int, method: str = "text", init_text: str | None = None
) -> PromptTuningConfig:
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init method {method!r}; choose one of {', '.join(INIT_METHODS)}")
    if method == "text" and not init_text:
        raise ValueError("init method 'text' needs an init text")
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init=INIT_METHODS[method],
        prompt_tuning_init_text=init_text if method == "text" else None,
        tokenizer_name_or_path=resolve_model_path(base_model) if method == "text" else None,
    )


def initial_prompt(
    model: PreTrainedModel, base_model: str, num_virtual_tokens: int, method: str = "text", init_text: str | None = None
) -> torch.Tensor:
    """The `[num_virtual_tokens, hidden]` tensor PEFT initialises a soft prompt with.

    Like any PEFT wrapping, this freezes the base model's parameters.
    """
    peft_model = get_peft_model(model, prompt_config(base_model, num_virtual_tokens, method, init_text))
    return peft_model.get_prompt_embedding_to_save("default").detach().clone()
