"""What every PEFT method answers, with the answers of a plain soft prompt as defaults: a
method module overrides what it does differently, as PEFT's tuners subclass `PromptLearningConfig`."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft import PeftConfig

from promptmux.core.errors import IncompatiblePromptError, InvalidArtifactError
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.methods.prompt import EMBEDDINGS, Prompt, ServingForm, prompt_tensors

Randn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TrainingStart:
    """How a training run starts a method's prompt: its size, and for prompt tuning its init
    (the text's tokens, from the tokenizer at `tokenizer_path`) and for prefix tuning its projection."""

    num_virtual_tokens: int
    init: str = "random"
    init_text: str | None = None
    tokenizer_path: str | None = None
    prefix_projection: bool = True


class PeftMethod:
    name: ClassVar[str]
    tensor_names: ClassVar[frozenset[str]] = frozenset({EMBEDDINGS})
    layout_in_config: ClassVar[bool] = False  # whether loading a version needs its adapter_config (a prefix's shape)

    @property
    def peft_type(self) -> str:
        return self.name.upper()

    def tensors(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """The method's tensors checked (see `prompt.prompt_tensors`)."""
        return prompt_tensors(tensors, set(self.tensor_names), self.name, source)

    def check(self, prompt: Prompt, source: str) -> None:
        """Refuse a prompt whose config disagrees with its tensors (its sizes, its task)."""
        declared = prompt.peft_config.get("num_virtual_tokens")
        if declared is not None and declared != prompt.embeddings.shape[0]:
            raise InvalidArtifactError(f"{source}: adapter_config says {declared} virtual tokens but "
                                       f"{EMBEDDINGS} has {prompt.embeddings.shape[0]}")
        self.check_layout(prompt, source)

    def check_layout(self, prompt: Prompt, source: str) -> None:
        """Refuse tensors laid out otherwise than the config says: a soft prompt's width."""
        if prompt.peft_config.get("token_dim") not in (None, prompt.embeddings.shape[1]):
            raise InvalidArtifactError(f"{source}: adapter_config says token_dim {prompt.peft_config['token_dim']} but "
                                       f"{EMBEDDINGS} is {tuple(prompt.embeddings.shape)}")

    def width(self, prompt: Prompt) -> int | None:
        """The width a prompt's rows must have on its base model (its hidden size); None when
        the rows are not embeddings (a prefix)."""
        return prompt.embeddings.shape[1]

    def check_fits(self, prompt: Prompt, model: BaseModelFingerprint, source: str) -> None:
        """Refuse a (consistent) prompt that does not fit `model`, saying what differs."""
        if prompt.embeddings.shape[1] != model.hidden_size:
            raise IncompatiblePromptError(f"{source}: token_dim {prompt.embeddings.shape[1]} != base model hidden_size "
                                          f"{model.hidden_size}")

    def serving_form(self, prompt: Prompt) -> ServingForm:
        """What the engine batches of this prompt, derived once per version: a soft prompt's embeddings."""
        return ServingForm(prompt.embeddings.float(), None)

    def check_servable(self, form: ServingForm, kv_layout: tuple[tuple[int, int], ...], source: str) -> None:
        """Refuse a form the engine cannot serve with its keys and values laid out as `kv_layout`
        ((KV heads, head size) per layer; empty when pinned KV is off). A soft prompt always can."""

    def task_id(self, config: dict[str, Any], asked: int | None) -> int | None:
        """The task an imported adapter serves: what was asked (a multitask prompt chooses one)."""
        return asked

    def training_config(self, start: TrainingStart) -> PeftConfig:
        raise InvalidArtifactError(f"promptmux does not train {self.name} prompts; import them (promptmux registry import)")

    def trained(self, tensor: torch.Tensor, config: dict[str, Any]) -> "torch.Tensor | Prompt":
        """What a trained PEFT model of this method registers: its prompt with the config it was trained with."""
        return Prompt(self.name, {EMBEDDINGS: tensor}, config)

    def example(self, model: BaseModelFingerprint, n: int, randn: Randn) -> Prompt:
        """A random prompt of `n` virtual tokens for `model`, as PEFT would store it (benchmarks, tests)."""
        return Prompt(self.name, {EMBEDDINGS: randn(n, model.hidden_size)}, {"peft_type": self.peft_type, "num_virtual_tokens": n})
