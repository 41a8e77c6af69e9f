"""The PEFT prompt-tuning configuration a task's training starts from: `random`, `text`
(from an init text, tokenized by the base model's own tokenizer) or `sample-vocab`.
"""

from peft import PromptTuningConfig, PromptTuningInit, TaskType

from promptmux.registry.base_models import resolve_model_path

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

