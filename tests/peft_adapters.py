"""Adapters of every PEFT prompt-learning method, made by PEFT itself, with non-trivial values.

Two of each: prompt tuning, P-tuning (MLP and LSTM encoders), prefix tuning (plain and with
`prefix_projection`), and multitask prompt tuning (one adapter of three tasks, served as two
of them). Every trainable parameter is moved well off its init, so a wrong layout or a
forgotten step shows in the outputs.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    MultitaskPromptTuningConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)

from promptmux.models.loading import load_model


@dataclass(frozen=True)
class Adapter:
    name: str
    folder: Path
    method: str
    task_id: int | None = None  # the task a multitask adapter is imported for


def configs() -> dict[str, tuple[str, PeftConfig]]:
    lm = TaskType.CAUSAL_LM
    return {
        "pt-a": ("prompt_tuning", PromptTuningConfig(task_type=lm, num_virtual_tokens=5)),
        "pt-b": ("prompt_tuning", PromptTuningConfig(task_type=lm, num_virtual_tokens=9)),
        "ptune-mlp": ("p_tuning", PromptEncoderConfig(task_type=lm, num_virtual_tokens=6, encoder_hidden_size=32)),
        "ptune-lstm": ("p_tuning", PromptEncoderConfig(task_type=lm, num_virtual_tokens=4, encoder_hidden_size=32,
                                                       encoder_reparameterization_type="LSTM")),
        "prefix": ("prefix_tuning", PrefixTuningConfig(task_type=lm, num_virtual_tokens=7)),
        "prefix-proj": ("prefix_tuning", PrefixTuningConfig(task_type=lm, num_virtual_tokens=3, prefix_projection=True,
                                                            encoder_hidden_size=24)),
        "mpt": ("multitask_prompt_tuning", MultitaskPromptTuningConfig(task_type=lm, num_virtual_tokens=4, num_tasks=3,
                                                                       num_ranks=2)),
    }


def make_adapters(base_model: str, folder: Path, names: list[str] | None = None) -> list[Adapter]:
    """Save each adapter under `folder`; the multitask one is listed twice (tasks 0 and 2)."""
    adapters = []
    for seed, (name, (method, config)) in enumerate(configs().items()):
        if names is not None and name not in names:
            continue
        save(base_model, config, folder / name, seed)
        tasks = (0, 2) if method == "multitask_prompt_tuning" else (None,)
        adapters += [Adapter(f"{name}-{task}" if task is not None else name, folder / name, method, task) for task in tasks]
    return adapters


def save(base_model: str, config: PeftConfig, folder: Path, seed: int, scale: float = 0.5) -> None:
    model = get_peft_model(load_model(base_model, dtype="float32"), config)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.eval()
    model.save_pretrained(folder)
