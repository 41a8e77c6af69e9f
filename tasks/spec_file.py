"""A task spec file: the `TaskSpec` fields, plus how to read its data (`data:`) and how to
train it (`training:`). `tasks/examples/*.yaml` are such files; `promptmux train --spec`
and the demo read them, and flags or callers override any part.
"""

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from promptmux.core.errors import PromptmuxError, describe
from promptmux.core.limits import limits
from promptmux.registry import TaskSpec
from promptmux.tasks.config import DEFAULT_LR, MethodSettings, TrainConfig
from promptmux.tasks.data import DataFields

EXAMPLES = Path(__file__).resolve().parent / "examples"


def read_fields(path: Path) -> dict[str, Any]:
    try:
        limits().check_file("spec_file_bytes", path.stat().st_size, f"task spec {path}")
        fields = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PromptmuxError(f"cannot read task spec {path}: {exc}") from exc
    if not isinstance(fields, dict):
        raise PromptmuxError(f"task spec {path} must be a mapping of TaskSpec fields")
    return fields


def resolve(fields: dict[str, Any], task: dict[str, Any], data: dict[str, Any], training: dict[str, Any],
            source: str = "the task spec") -> tuple[TaskSpec, DataFields, TrainConfig]:
    """Merge a spec file's sections with overrides (None values leave a field alone)."""
    fields = dict(fields)
    data_section, training_section = fields.pop("data", None) or {}, dict(fields.pop("training", None) or {})

    def merged(section: dict, overrides: dict) -> dict:
        return {**section, **{k: v for k, v in overrides.items() if v is not None}}

    try:
        spec = TaskSpec.model_validate(merged(fields, task))
        return (spec, DataFields.model_validate(merged(data_section, data)),
                TrainConfig.model_validate({**for_method(training_section, training.get("method"), source),
                                            **{k: v for k, v in training.items() if v is not None},
                                            **({"lr_from": "--lr"} if training.get("lr") is not None else {}),
                                            "base_model": spec.base_model}))
    except ValidationError as exc:
        raise PromptmuxError(f"{source}: {describe(exc.errors())}") from exc


def for_method(section: dict[str, Any], method: str | None, source: str) -> dict[str, Any]:
    """A spec's `training:` section as it applies to `method` (the command's, else the
    spec's own): `methods.<method>` over the rest; the spec's `lr` is for the spec's own method
    and is not carried to another one, which takes its own default (learning rates differ by
    method by a factor of ten: docs/quality.md)."""
    section = dict(section)
    per_method = {name: MethodSettings.model_validate(values or {})
                  for name, values in (section.pop("methods", None) or {}).items()}
    unknown = sorted(set(per_method) - set(DEFAULT_LR))
    if unknown:
        raise PromptmuxError(f"{source}: training.methods has {', '.join(unknown)}; the methods are "
                             f"{', '.join(DEFAULT_LR)}")
    own, chosen = section.get("method", "prompt"), method or section.get("method", "prompt")
    if "lr" in section:
        section["lr_from"] = "the spec's training.lr"
    if chosen != own and "lr" in section:
        section.pop("lr")
        section["lr_from"] = f"the default for {chosen}: the spec's training.lr is for {own}"
    settings = per_method.get(chosen)
    if settings is not None:
        given = settings.model_dump(exclude_none=True)
        section.update(given)
        if "lr" in given:
            section["lr_from"] = f"the spec's training.methods.{chosen}.lr"
    return section


def example(name: str, **task: Any) -> tuple[TaskSpec, DataFields, TrainConfig]:
    """One of `tasks/examples/NAME.yaml`, with TaskSpec overrides (e.g. `base_model`)."""
    path = EXAMPLES / f"{name}.yaml"
    return resolve(read_fields(path), task, {}, {}, str(path))
