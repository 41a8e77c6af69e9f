"""The one place a PEFT method is registered: its name (PEFT's `peft_type`, lower case), the module
that holds it, and, for a method promptmux trains, its `--method` name and default learning
rate (as measured in docs/quality.md). Reading the catalog loads no torch (the registry's
metadata commands and the console name methods without loading one); `method(name)` loads
the module.

Adding a method: write its module (a `PeftMethod`, see `base.py`) and add its row here.
"""

import importlib
import json
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from promptmux.core.errors import InvalidArtifactError

if TYPE_CHECKING:
    from promptmux.methods.base import PeftMethod


class Entry(NamedTuple):
    module: str
    train_as: str | None = None  # `promptmux train --method ...`; None: served and imported, not trained here
    default_lr: float | None = None


CATALOG = {
    "prompt_tuning": Entry("promptmux.methods.prompt_tuning", "prompt", 3e-2),
    "p_tuning": Entry("promptmux.methods.p_tuning", "p-tuning", 3e-3),
    "prefix_tuning": Entry("promptmux.methods.prefix_tuning", "prefix", 3e-3),
    "multitask_prompt_tuning": Entry("promptmux.methods.multitask_prompt_tuning"),
}
Method = Literal[tuple(CATALOG)]  # type: ignore[valid-type]
PEFT_TYPES: dict[str, Method] = {name.upper(): name for name in CATALOG}  # PEFT's `peft_type` of each
SUPPORTED = f"promptmux serves {', '.join(list(PEFT_TYPES)[:-1])} and {list(PEFT_TYPES)[-1]} adapters of decoder-only models"
TRAINED: dict[str, Method] = {entry.train_as: name for name, entry in CATALOG.items() if entry.train_as}
TrainMethod = Literal[tuple(TRAINED)]  # type: ignore[valid-type]
DEFAULT_LR: dict[str, float] = {entry.train_as: entry.default_lr for entry in CATALOG.values() if entry.train_as}


def method(name: str) -> "PeftMethod":
    """The method called `name` (its module is loaded on first use)."""
    return importlib.import_module(CATALOG[name].module).METHOD


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
