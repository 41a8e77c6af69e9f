"""The PEFT configuration a task's training starts from, by method: prompt tuning (`random`,
`text` from an init text tokenized by the base model's own tokenizer, or `sample-vocab`),
P-tuning (an MLP prompt encoder) or prefix tuning (optionally through an MLP projection);
and the PEFT model it builds on the base model, as a run, a tuning trial or a worker starts it.
"""

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)

from promptmux.registry import TaskKind, TaskSpec
from promptmux.serving.models.embedded import resolve_model_path
from promptmux.serving.models.loading import load_model, load_tokenizer, resolve_device
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.encoding import TaskEncoder

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


def peft_config(config: TrainConfig, init_text: str) -> PeftConfig:
    """The PEFT config of `config.method`."""
    if config.method == "p-tuning":
        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)
    if config.method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens,
                                  prefix_projection=config.prefix_projection)
    return prompt_config(config.base_model, config.num_virtual_tokens, config.init, init_text)


def default_init_text(spec: TaskSpec) -> str:
    if spec.description:
        return spec.description
    if spec.kind is TaskKind.classification:
        return f"Classify the input as one of: {', '.join(spec.labels)}."
    return f"Complete the {spec.name} task."


def prompt_model(spec: TaskSpec, config: TrainConfig) -> tuple[PeftModel, TaskEncoder, str]:
    """The base model with the method's untrained prompt, seeded, its task encoder, and the init text."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.base_model, config.trust_remote_code)
    base = load_model(config.base_model, torch.float32, device, config.trust_remote_code)
    init_text = config.init_text or default_init_text(spec)
    model = get_peft_model(base, peft_config(config, init_text))
    return model, TaskEncoder(spec, tokenizer, config.max_input_tokens, config.max_output_tokens), init_text
