"""Train a task's prompt with a PEFT prompt-learning method (prompt tuning, P-tuning or prefix
tuning), evaluate it against the untuned base model, and register it as the task's next
version.

The training data is split once more: a validation share drives early stopping and the
choice of the best checkpoint (`fit`), and the held-out set is touched only by the
before/after evaluation (`Evaluator`), so the reported figures are not tuned on.

Nothing is written to the registry until training and evaluation have succeeded.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from peft import PeftModel
from rich.console import Console

from promptmux.core.errors import DataError
from promptmux.core.limits import limits
from promptmux.methods.catalog import PEFT_TYPES, method
from promptmux.methods.prompt import Prompt
from promptmux.models.loading import fingerprint
from promptmux.registry import PromptVersion, Registry, TaskKind, TaskSpec
from promptmux.registry.names import validate_alias
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import Example, row_id, rows_digest, split
from promptmux.tasks.evaluate import Evaluator
from promptmux.tasks.fit import SHIFT_GAP, Curve, check_trackers, far_above, fit
from promptmux.tasks.progress import status
from promptmux.tasks.prompt_init import prompt_model


@dataclass
class TrainResult:
    manifest: PromptVersion
    metrics: dict
    curve_png: Path
    metrics_json: Path


def trained_prompt(model: PeftModel) -> torch.Tensor | Prompt:
    """What a trained PEFT model registers: its prompt embeddings (for P-tuning the encoder's
    output, for prefix tuning the prefix after its projection), as PEFT saves them, with the
    PEFT config it was trained with (a prompt-tuning prompt gets the registry's own config)."""
    tensor = model.get_prompt_embedding_to_save("default").detach().cpu()
    config = model.peft_config["default"]
    return method(PEFT_TYPES[config.peft_type]).trained(tensor, json.loads(json.dumps(config.to_dict(), default=str)))


def plot_curve(curve: Curve, title: str, path: Path) -> None:
    figure = Figure(figsize=(7, 4))  # no pyplot: no backend, no global state
    axis = figure.subplots()
    axis.plot(curve.step, curve.train_loss, label="train loss", linewidth=1)
    axis.plot(curve.eval_step, curve.eval_loss, "o-", label="validation loss")
    axis.axvline(curve.best_step, color="grey", linestyle=":", label=f"best checkpoint (step {curve.best_step})")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (target tokens)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def train_task(
    spec: TaskSpec,
    train: list[Example],
    held_out: list[Example],
    config: TrainConfig,
    registry: Registry,
    output_dir: Path,
    data_fingerprint: str,
    alias: str | None = None,
    note: str = "",
    console: Console | None = None,
    extra_metrics: dict | None = None,
) -> TrainResult:
    """Train, evaluate, write the learning curve and metrics, then register the new version
    (with `extra_metrics` beside its own: a search's trials)."""
    console = console or Console(stderr=True)
    limits().check_spec(spec)  # before anything loads: a task past the limits is refused, not trained
    check_trackers(config)
    if alias:
        validate_alias(alias)
    if spec.kind is TaskKind.classification:
        unknown = sorted({e.target for e in train + held_out} - set(spec.labels))
        if unknown:
            raise DataError(f"targets {unknown} are not labels of {spec.name!r} ({', '.join(spec.labels)})")
    existing = registry.tasks.get(spec.name) if registry.tasks.exists(spec.name) else None
    console.print(f"{config.method}: learning rate {config.lr:g} ({config.lr_from})", highlight=False)
    with status(console, f"loading {config.base_model}"):
        model, encoder, init_text = prompt_model(spec, config)
    base_fingerprint = fingerprint(model.get_base_model())
    problem = existing.base_fingerprint.misfit(base_fingerprint) if existing else None
    if problem:
        raise DataError(f"task {spec.name!r} is registered for another base model ({existing.spec.base_model}): {problem}")
    fit_set, validation = split(train, config.validation_fraction, config.seed)
    evaluator = Evaluator(model, encoder, init_text, config.batch_size, console)
    started = time.time()
    model.eval()
    before = evaluator.evaluate(held_out, "before")
    if config.workers > 1:
        from promptmux.tasks.workers import fit_on_workers

        curve = fit_on_workers(model, encoder, fit_set, validation, config, output_dir, console, workers=config.workers)
    else:
        curve = fit(model, encoder, fit_set, validation, config, output_dir, console)
    after = evaluator.evaluate(held_out, "after")
    held_out_loss = after["eval_loss_after"]
    if far_above(held_out_loss, min(curve.eval_loss), SHIFT_GAP):
        curve.warnings.append(
            f"the held-out loss ({held_out_loss:.4f}) is far above the validation loss ({min(curve.eval_loss):.4f}): "
            "the held-out data differs from the training data (its format, an instruction, the kind of examples); "
            "make them alike, e.g. with --input-pattern"
        )
    metrics = {**before, **after, "train_examples": len(fit_set), "validation_examples": len(validation),
               "eval_examples": len(held_out), "eval_rows": rows_digest(held_out), "steps": curve.step[-1] if curve.step else 0,
               "best_step": curve.best_step, "stopped_early": curve.stopped_early,
               "final_train_loss": curve.train_loss[-1], "best_validation_loss": min(curve.eval_loss),
               "warnings": curve.warnings, "train_seconds": round(time.time() - started, 2),
               "learning_curve": {"step": curve.step, "train_loss": [round(x, 5) for x in curve.train_loss],
                                  "eval_step": curve.eval_step, "eval_loss": [round(x, 5) for x in curve.eval_loss]},
               **(extra_metrics or {})}
    if spec.kind is TaskKind.classification:
        metrics.update(accuracy=after["tuned"]["accuracy"], macro_f1=after["tuned"]["macro_f1"],
                       base_accuracy=before["base_model"]["accuracy"], base_macro_f1=before["base_model"]["macro_f1"],
                       template_base_accuracy=before["template_base_model"]["accuracy"],
                       template_base_macro_f1=before["template_base_model"]["macro_f1"])
    output_dir.mkdir(parents=True, exist_ok=True)
    curve_png, metrics_json = output_dir / "learning_curve.png", output_dir / "metrics.json"
    plot_curve(curve, f"{spec.name} on {config.base_model}", curve_png)
    metrics_json.write_text(json.dumps({"metrics": metrics, "curve": asdict(curve), "config": config.model_dump(),
                                        "eval_row_ids": sorted(row_id(row) for row in held_out)}, indent=2))

    with registry.tasks.holding_first_version(spec, base_fingerprint):
        parent = registry.versions.latest(spec.name).version if registry.versions.all(spec.name, include_archived=False) else None
        manifest = registry.versions.register(
            spec.name,
            trained_prompt(model),
            base_fingerprint,
            init_method=config.init,
            init_text=init_text if config.init == "text" else None,
            training=config.model_dump(),
            metrics=metrics,
            data_fingerprint=data_fingerprint,
            parent_version=parent,
            note=note,
        )
    if alias:
        registry.aliases.set(spec.name, alias, manifest.version)
    return TrainResult(manifest, metrics, curve_png, metrics_json)
