"""How large what a task holds, and what an import brings, may be.

A task's spec is read on every request (its template rendered and tokenized, a
classification's verbalizers scored), so its size bounds each request's work: a 200,000-label
spec once tied a replica up for minutes. The defaults fit every real task with room to spare
(a few-shot template of 30,000 characters, 256 labels: intent sets have 77 to 150); an operator with larger tasks
raises them with `PROMPTMUX_LIMIT_<NAME>` (e.g. `PROMPTMUX_LIMIT_LABELS=4096`), on every
machine that writes the registry and every replica that serves it.

The limits are checked where a task or a version is written (`TaskStore.create`, import,
training) and where an import's files are read, never on reading the registry: a limit
lowered later does not make registered tasks unreadable.
"""

from functools import cache
from typing import Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptmux.core.errors import TooLargeError

KiB, MiB = 1024, 1024 * 1024


class SizedSpec(Protocol):
    """What the limits read of a task's spec (`promptmux.registry.schemas.TaskSpec`)."""

    name: str
    labels: dict[str, str]
    template: str
    system: str | None
    description: str


class SpecLimits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTMUX_LIMIT_", extra="forbid")

    labels: int = Field(256, ge=2, description="labels of a classification task")
    label_chars: int = Field(100, ge=1, description="characters of a label's name")
    verbalizer_chars: int = Field(64, ge=1, description="characters of a label's verbalizer")
    template_chars: int = Field(32_768, ge=7, description="characters of a task's input template")
    system_chars: int = Field(32_768, ge=1, description="characters of a chat task's system message")
    description_chars: int = Field(4096, ge=0, description="characters of a task's description")
    spec_file_bytes: int = Field(1 * MiB, ge=1 * KiB, description="bytes of a task file (promptmux-task.json, a YAML spec)")
    adapter_config_bytes: int = Field(64 * KiB, ge=1 * KiB, description="bytes of an adapter_config.json")
    tensor_bytes: int = Field(512 * MiB, ge=1 * MiB, description="bytes of an adapter's tensors")

    def check_spec(self, spec: SizedSpec) -> None:
        """Refuse a spec past a limit, in one line naming it and its setting."""
        sizes = [("labels", len(spec.labels), self.labels),
                 ("template_chars", len(spec.template), self.template_chars),
                 ("system_chars", len(spec.system or ""), self.system_chars),
                 ("description_chars", len(spec.description), self.description_chars),
                 ("label_chars", max(map(len, spec.labels), default=0), self.label_chars),
                 ("verbalizer_chars", max(map(len, spec.labels.values()), default=0), self.verbalizer_chars)]
        for name, size, limit in sizes:
            if size > limit:
                raise TooLargeError(f"task {spec.name!r}: {size:,} {name.replace('_', ' ')} is past the limit of "
                                    f"{limit:,} (PROMPTMUX_LIMIT_{name.upper()})")

    def check_file(self, name: str, size: int, what: str) -> None:
        """Refuse a file of `size` bytes past the limit `name`, before reading it."""
        limit = getattr(self, name)
        if size > limit:
            raise TooLargeError(f"{what} is {size:,} bytes, past the limit of {limit:,} (PROMPTMUX_LIMIT_{name.upper()})")


@cache
def limits() -> SpecLimits:
    """The limits of this process, read from the environment once."""
    return SpecLimits()
