"""Prompt tuning (Lester et al.): `prompt_embeddings` [n, hidden] are the prompt itself, served
as a soft prompt before the input's embeddings. A run starts them at random, from an init
text's token embeddings, or from sampled vocabulary."""

from typing import Any

import torch
from peft import PeftConfig, PromptTuningConfig, PromptTuningInit, TaskType

from promptmux.methods.base import PeftMethod, TrainingStart
from promptmux.methods.prompt import Prompt

INIT_METHODS = {"random": PromptTuningInit.RANDOM, "text": PromptTuningInit.TEXT, "sample-vocab": PromptTuningInit.SAMPLE_VOCAB}


class PromptTuning(PeftMethod):
    name = "prompt_tuning"

    def training_config(self, start: TrainingStart) -> PeftConfig:
        if start.init not in INIT_METHODS:
            raise ValueError(f"unknown init method {start.init!r}; choose one of {', '.join(INIT_METHODS)}")
        if start.init == "text" and not start.init_text:
            raise ValueError("init method 'text' needs an init text")
        text = start.init == "text"
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=start.num_virtual_tokens,
            prompt_tuning_init=INIT_METHODS[start.init],
            prompt_tuning_init_text=start.init_text if text else None,
            tokenizer_name_or_path=start.tokenizer_path if text else None,
        )

    def trained(self, tensor: torch.Tensor, config: dict[str, Any]) -> "torch.Tensor | Prompt":
        """The bare tensor: the registry writes its own `PromptTuningConfig` for it (init RANDOM,
        so PEFT does not want the tokenizer again on load; the real init is in the manifest)."""
        return tensor


METHOD = PromptTuning()
