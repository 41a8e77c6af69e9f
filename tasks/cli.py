"""`promptmux train`: train, evaluate and register a task's soft prompt."""

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
import yaml

from registry import PromptmuxError, TaskKind, TaskSpec
from registry.base_models import DEFAULT_BASE_MODEL
from registry.cli import BaseModelOption, RegistryOption, TrustRemoteCode, console, open_registry, print_json
from tasks.data import examples, fingerprint_files, load_records, split
from tasks.train import TrainConfig, train_task


def parse_labels(text: str) -> dict[str, str]:
    """`0,1` or `pos=positive,neg=negative` → {label: verbalizer}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, _, verbalizer = item.partition("=")
        labels[label] = verbalizer or label
    return labels


def load_spec(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PromptmuxError(f"cannot read task spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptmuxError(f"task spec {path} must be a mapping of TaskSpec fields")
    return data


def train(
    data: Annotated[Path, typer.Option("--data", help="training data: .json, .jsonl, .csv or a saved datasets dir")],
    spec_file: Annotated[Path | None, typer.Option("--spec", help="task spec (YAML/JSON TaskSpec)")] = None,
    task: Annotated[str | None, typer.Option("--task", help="task name (overrides the spec's)")] = None,
    kind: Annotated[TaskKind | None, typer.Option("--kind")] = None,
    template: Annotated[str | None, typer.Option(help="input template with {input}")] = None,
    labels: Annotated[str | None, typer.Option(help="labels, e.g. 0,1 or pos=positive,neg=negative")] = None,
    input_field: Annotated[str, typer.Option("--input-field")] = "input",
    target_field: Annotated[str, typer.Option("--target-field")] = "output",
    eval_data: Annotated[Path | None, typer.Option("--eval-data", help="held-out data (else --eval-fraction)")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0.01, max=0.9)] = 0.2,
    limit: Annotated[int | None, typer.Option(min=1, help="use only the first N training records")] = None,
    base_model: BaseModelOption = None,
    registry: RegistryOption = "",
    init: Annotated[str, typer.Option(help="random, text or sample-vocab")] = "text",
    init_text: Annotated[str | None, typer.Option("--init-text")] = None,
    num_virtual_tokens: Annotated[int, typer.Option("--num-virtual-tokens", min=1)] = 20,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-2,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1)] = 1,
    max_input_tokens: Annotated[int, typer.Option("--max-input-tokens", min=1)] = 256,
    max_output_tokens: Annotated[int, typer.Option("--max-output-tokens", min=1)] = 64,
    seed: int = 42,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu")] = "auto",
    alias: Annotated[str | None, typer.Option(help="point this alias at the new version")] = None,
    note: str = "",
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="learning curve and metrics")] = None,
    trust_remote_code: TrustRemoteCode = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
) -> None:
    """Train a soft prompt with PEFT prompt tuning, compare it with the base model, register it."""
    fields = load_spec(spec_file) if spec_file else {}
    overrides = {"name": task, "kind": kind, "template": template, "base_model": base_model,
                 "labels": parse_labels(labels) if labels else None}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields.setdefault("base_model", DEFAULT_BASE_MODEL)
    if "name" not in fields:
        raise PromptmuxError("name the task with --task or a --spec file")
    spec = TaskSpec.model_validate(fields)
    config = TrainConfig(
        base_model=spec.base_model, num_virtual_tokens=num_virtual_tokens, init=init, init_text=init_text, lr=lr,
        epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, max_input_tokens=max_input_tokens,
        max_output_tokens=max_output_tokens, seed=seed, device=device, trust_remote_code=trust_remote_code,
    )
    train_set = examples(load_records(data), input_field, target_field, data, limit)
    files = [data]
    if eval_data:
        held_out = examples(load_records(eval_data), input_field, target_field, eval_data)
        files.append(eval_data)
    else:
        train_set, held_out = split(train_set, eval_fraction, seed)
    reg = open_registry(registry)
    out = output_dir or Path("promptmux-runs") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    result = train_task(spec, train_set, held_out, config, reg, out, fingerprint_files(files), alias, note)
    summary = {"task": spec.name, "version": result.manifest.version, "uri": reg.version_uri(spec.name, result.manifest.version),
               "metrics": result.metrics, "learning_curve": str(result.curve_png), "metrics_json": str(result.metrics_json)}
    if as_json:
        print_json(summary)
        return
    console.print(f"registered {spec.name} version {result.manifest.version}; learning curve {result.curve_png}")
    headline = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    console.print(json.dumps(headline, indent=2))

