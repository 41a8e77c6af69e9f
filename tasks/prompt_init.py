"""The PEFT model a task's training starts from (each method's module gives its config:
`promptmux.methods`), as a run, a tuning trial or a worker starts it, and the init text a
prompt-tuning prompt starts from when none is given.
"""

import torch
from peft import PeftConfig, PeftModel, get_peft_model

from promptmux.methods.base import TrainingStart
from promptmux.methods.catalog import TRAINED, method
from promptmux.models.embedded import resolve_model_path
from promptmux.models.loading import load_model, load_tokenizer, resolve_device
from promptmux.registry import TaskKind, TaskSpec
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.encoding import TaskEncoder


def peft_config(config: TrainConfig, init_text: str) -> PeftConfig:
    """The PEFT config `config.method` starts from."""
    start = TrainingStart(config.num_virtual_tokens, config.init, init_text,
                          resolve_model_path(config.base_model) if config.init == "text" else None, config.prefix_projection)
    return method(TRAINED[config.method]).training_config(start)


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
