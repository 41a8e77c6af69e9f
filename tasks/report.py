"""What a training run shows its user: tuned vs base, the confusion matrix, samples."""

from rich.console import Console
from rich.table import Table

from promptmux.registry import TaskKind, TaskSpec
from promptmux.tasks.progress import console as default_console


def comparison_table(spec: TaskSpec, metrics: dict) -> Table:
    """Accuracy and macro F1 of the tuned prompt beside the untuned base model (classification),
    or held-out loss and perplexity before and after tuning (generation)."""
    table = Table(title=f"{spec.name}: {metrics['eval_examples']} held-out examples")
    if spec.kind is TaskKind.classification:
        for column in ("model", "accuracy", "macro F1"):
            table.add_column(column)
        for name, key in (("tuned prompt", "tuned"), *base_rows(metrics)):
            table.add_row(name, f"{metrics[key]['accuracy']:.3f}", f"{metrics[key]['macro_f1']:.3f}")
        return table
    for column in ("", "held-out loss", "perplexity"):
        table.add_column(column)
    for stage in ("before", "after"):
        table.add_row(f"{stage} tuning", f"{metrics[f'eval_loss_{stage}']:.3f}", f"{metrics[f'perplexity_{stage}']:.2f}")
    return table


def base_rows(metrics: dict) -> list[tuple[str, str]]:
    """(row name, metrics key) of the untuned baselines: the fair one (the model's chat
    zero-shot form, or its template form without a chat template) and the template form."""
    if metrics.get("base_form") != "chat zero-shot":
        return [("untuned base model (template)", "base_model")]
    return [("untuned base model (chat zero-shot)", "base_model"), ("untuned base model (template)", "template_base_model")]


def confusion_table(report: dict, title: str) -> Table:
    matrix = report["confusion_matrix"]
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("gold \\ predicted")
    for label in matrix["labels"]:
        table.add_column(label)
    for label, row in zip(matrix["labels"], matrix["rows_gold_cols_predicted"]):
        table.add_row(label, *map(str, row))
    return table


def samples_table(metrics: dict) -> Table:
    table = Table(title="sample generations", show_lines=True)
    for column in ("input", "before tuning", "after tuning"):
        table.add_column(column, overflow="fold")
    for before, after in zip(metrics["samples_before"], metrics["samples_after"]):
        table.add_row(before["input"], before["output"], after["output"])
    return table


def print_report(spec: TaskSpec, metrics: dict, console: Console | None = None) -> None:
    console = console or default_console
    console.print(comparison_table(spec, metrics))
    if spec.kind is TaskKind.classification:
        console.print(confusion_table(metrics["tuned"], "tuned prompt: confusion matrix"))
        console.print(confusion_table(metrics["base_model"], "untuned base model: confusion matrix"))
    else:
        console.print(samples_table(metrics))
    stopped = "stopped early" if metrics["stopped_early"] else "ran every epoch"
    console.print(f"{metrics['train_examples']} training / {metrics['validation_examples']} validation examples, "
                  f"{metrics['steps']} steps ({stopped}), best checkpoint at step {metrics['best_step']}, "
                  f"{metrics['train_seconds']:.0f} s")
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
