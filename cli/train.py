"""`promptmux train`: train, evaluate and register a task's soft prompt."""

from datetime import datetime
from pathlib import Path
from typing import Annotated, get_args

import typer

from promptmux.cli import common
from promptmux.cli.common import (
    BaseModelOption,
    RegistryOption,
    TrustRemoteCode,
    open_registry,
    parse_labels,
    print_json,
)
from promptmux.core.defaults import DEFAULT_BASE_MODEL
from promptmux.core.errors import PromptmuxError
from promptmux.registry.schemas import TaskSpec
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import Example
from promptmux.tasks.progress import console
from promptmux.tasks.spec_file import read_fields, resolve

INIT_METHODS = list(get_args(TrainConfig.model_fields["init"].annotation))


def _option(flag: str, help_text: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help_text, show_default=False, **kwargs)


def _help(field: str) -> str:
    info = TrainConfig.model_fields[field]
    return info.description if info.default is None else f"{info.description} [default: {info.default}]"


def task_data(spec_file: Path | None, task: str | None, data: Path, eval_data: Path | None, eval_fraction: float,
              limit: int | None, task_fields: dict, data_fields: dict, training: dict,
              ) -> tuple[TaskSpec, TrainConfig, list[Example], list[Example], str]:
    """A task to train (or tune), from a spec file and flags: its spec, training settings, the
    training and held-out examples, and the data's fingerprint."""
    from promptmux.models.loading import check_base_model, model_identity
    from promptmux.tasks.data import examples, fingerprint_files, held_out_split, load_records

    fields = read_fields(spec_file) if spec_file else {}
    if task is None and "name" not in fields:
        raise PromptmuxError("name the task with --task or a --spec file")
    spec, record_fields, config = resolve({"base_model": DEFAULT_BASE_MODEL, **fields}, task_fields, data_fields,
                                          training, str(spec_file or "the task"))
    spec = spec.model_copy(update={"base_model": model_identity(spec.base_model)})
    check_base_model(spec.base_model)  # before reading data or loading anything
    train_set = examples(load_records(data), record_fields, data, limit)
    files = [data]
    if eval_data:
        held_out = examples(load_records(eval_data), record_fields, eval_data)
        files.append(eval_data)
    else:
        train_set, held_out = held_out_split(train_set, eval_fraction)
    return spec, config, train_set, held_out, fingerprint_files(files)


def train(
    data: Annotated[Path, typer.Option("--data", help="training data: .json, .jsonl, .csv or a saved datasets dir")],
    spec_file: Annotated[Path | None, typer.Option("--spec", help="task spec (YAML/JSON TaskSpec, optional training: section)")] = None,
    task: Annotated[str | None, typer.Option("--task", help="task name (overrides the spec's)")] = None,
    kind: common.KindOption = None,
    template: common.TemplateOption = None,
    labels: common.LabelsOption = None,
    task_format: common.FormatOption = None,
    system: common.SystemOption = None,
    input_field: Annotated[str | None, _option("--input-field", "record field holding the input [default: input]")] = None,
    target_field: Annotated[str | None, _option("--target-field", "record field holding the target [default: output]")] = None,
    input_pattern: Annotated[str | None, _option("--input-pattern", "regex with one group: the part of the input the "
                                                 "task sees")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval-data", help="held-out data (else --eval-fraction)")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="without --eval-data: the share of rows "
                                                 "held out, chosen by a digest of each row (not the seed), so "
                                                 "every version is evaluated on the same rows")] = 0.2,
    limit: Annotated[int | None, typer.Option(min=1, help="use only the first N training records")] = None,
    base_model: BaseModelOption = None,
    registry: RegistryOption = "",
    method: Annotated[str | None, _option("--method", _help("method"))] = None,
    prefix_projection: Annotated[bool | None, typer.Option("--prefix-projection/--no-prefix-projection",
                                                           help=_help("prefix_projection"), show_default=False)] = None,
    init: Annotated[str | None, _option("--init", f"{_help('init')} (one of: {', '.join(INIT_METHODS)})")] = None,
    init_text: Annotated[str | None, _option("--init-text", _help("init_text"))] = None,
    num_virtual_tokens: Annotated[int | None, _option("--num-virtual-tokens", _help("num_virtual_tokens"), min=1)] = None,
    lr: Annotated[float | None, _option("--lr", _help("lr"), min=0.0)] = None,
    report_to: Annotated[list[str] | None, _option("--report-to", f"{_help('report_to')} (tensorboard, mlflow or "
                                                   "wandb; repeat for several)")] = None,
    lr_scheduler: Annotated[str | None, _option("--lr-scheduler", _help("lr_scheduler"))] = None,
    epochs: Annotated[int | None, _option("--epochs", _help("epochs"), min=1)] = None,
    batch_size: Annotated[int | None, _option("--batch-size", _help("batch_size"), min=1)] = None,
    grad_accum: Annotated[int | None, _option("--grad-accum", _help("grad_accum"), min=1)] = None,
    validation_fraction: Annotated[float | None, _option("--validation-fraction", _help("validation_fraction"))] = None,
    early_stopping_patience: Annotated[int | None, _option("--early-stopping-patience",
                                                           _help("early_stopping_patience"), min=0)] = None,
    max_input_tokens: Annotated[int | None, _option("--max-input-tokens", _help("max_input_tokens"), min=1)] = None,
    max_output_tokens: Annotated[int | None, _option("--max-output-tokens", _help("max_output_tokens"), min=1)] = None,
    bf16: Annotated[bool | None, _option("--bf16", _help("bf16"))] = None,
    seed: Annotated[int | None, _option("--seed", _help("seed"))] = None,
    workers: Annotated[int | None, _option("--workers", _help("workers"), min=1)] = None,
    device: Annotated[str | None, _option("--device", "auto, cuda or cpu [default: auto]")] = None,
    alias: Annotated[str | None, typer.Option(help="point this alias at the new version")] = None,
    note: Annotated[str, typer.Option(help="free-text note stored with the version")] = "",
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="learning curve and metrics")] = None,
    trust_remote_code: TrustRemoteCode = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
) -> None:
    """Train a prompt (PEFT prompt tuning, P-tuning or prefix tuning), compare it with the base model, register it.

    Training settings come from the spec file's `training:` section and record fields from
    its `data:` section; flags override both.
    """
    from promptmux.tasks.report import print_report
    from promptmux.tasks.train import train_task

    spec, config, train_set, held_out, data_fingerprint = task_data(
        spec_file, task, data, eval_data, eval_fraction, limit,
        {"name": task, "kind": kind, "template": template, "base_model": base_model,
         "labels": parse_labels(labels) if labels else None, "format": task_format, "system": system},
        {"input_field": input_field, "target_field": target_field, "input_pattern": input_pattern},
        {"method": method, "prefix_projection": prefix_projection, "init": init, "init_text": init_text, "num_virtual_tokens": num_virtual_tokens, "lr": lr,
         "lr_scheduler": lr_scheduler, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
         "validation_fraction": validation_fraction, "early_stopping_patience": early_stopping_patience,
         "max_input_tokens": max_input_tokens, "max_output_tokens": max_output_tokens, "bf16": bf16, "seed": seed,
         "workers": workers, "device": device, "trust_remote_code": trust_remote_code or None, "report_to": report_to or None},
    )
    reg = open_registry(registry, create=True)
    out = output_dir or Path("promptmux-runs") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    result = train_task(spec, train_set, held_out, config, reg, out, data_fingerprint, alias, note)
    summary = {"task": spec.name, "version": result.manifest.version, "uri": reg.versions.uri(spec.name, result.manifest.version),
               "metrics": result.metrics, "learning_curve": str(result.curve_png), "metrics_json": str(result.metrics_json)}
    if as_json:
        print_json(summary)
        return
    console.print(f"registered {spec.name} version {result.manifest.version}; learning curve {result.curve_png}")
    print_report(spec, result.metrics)
