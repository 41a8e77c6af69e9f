"""The one place a PEFT method is registered: its name, PEFT's `peft_type` for it, the module
that holds it, and, for a method promptmux trains, its `--method` name and default learning
rate (as measured in docs/quality.md). Reading the catalog loads no torch (the registry's
metadata commands and the console name methods without loading one); `method(name)` loads
the module.

Adding a method: write its module (a `PeftMethod`, see `base.py`) and add its row here.
"""

import importlib
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from promptmux.methods.base import PeftMethod


class Entry(NamedTuple):
    peft_type: str
    module: str
    train_as: str | None = None  # `promptmux train --method ...`; None: served and imported, not trained here
    default_lr: float | None = None


CATALOG = {
    "prompt_tuning": Entry("PROMPT_TUNING", "promptmux.methods.prompt_tuning", "prompt", 3e-2),
    "p_tuning": Entry("P_TUNING", "promptmux.methods.p_tuning", "p-tuning", 3e-3),
    "prefix_tuning": Entry("PREFIX_TUNING", "promptmux.methods.prefix_tuning", "prefix", 3e-3),
    "multitask_prompt_tuning": Entry("MULTITASK_PROMPT_TUNING", "promptmux.methods.multitask_prompt_tuning"),
}
Method = Literal[tuple(CATALOG)]  # type: ignore[valid-type]
PEFT_TYPES: dict[str, Method] = {entry.peft_type: name for name, entry in CATALOG.items()}
SUPPORTED = f"promptmux serves {', '.join(list(PEFT_TYPES)[:-1])} and {list(PEFT_TYPES)[-1]} adapters of decoder-only models"
TRAINED: dict[str, Method] = {entry.train_as: name for name, entry in CATALOG.items() if entry.train_as}
TrainMethod = Literal[tuple(TRAINED)]  # type: ignore[valid-type]
DEFAULT_LR: dict[str, float] = {entry.train_as: entry.default_lr for entry in CATALOG.values() if entry.train_as}


def method(name: str) -> "PeftMethod":
    """The method called `name` (its module is loaded on first use)."""
    return importlib.import_module(CATALOG[name].module).METHOD
