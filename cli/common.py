"""What every `promptmux` command shares: the consoles, the common options (`--registry`,
`--base-model`, a task's fields), opening the registry and printing tables and JSON.

Every command that touches the registry takes `--registry URI` (default
`$PROMPTMUX_REGISTRY`, else a per-user directory).
"""

import json
import re
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table

from promptmux.core.defaults import DEFAULT_BASE_MODEL
from promptmux.core.errors import PromptmuxError
from promptmux.methods.catalog import CATALOG
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry.registry import REGISTRY_ENV, Registry, default_registry_uri
from promptmux.registry.schemas import TaskKind
from promptmux.tasks.progress import err_console

RegistryOption = Annotated[
    str,
    typer.Option("--registry", envvar=REGISTRY_ENV, help="registry URI: a path or any fsspec URL", show_default=False),
]


JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output")]


BaseModelOption = Annotated[
    str | None, typer.Option("--base-model", help="Hugging Face id, local path or embedded id (tiny-random-llama, smollm2-135m-instruct)")
]


TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="allow model code from the checkpoint")]


KindOption = Annotated[TaskKind | None, typer.Option("--kind", help="generation or classification", show_default=False)]


def read_escapes(text: str | None) -> str | None:
    """A flag's text with the escapes `\\n` (newline), `\\t` (tab) and `\\\\` (backslash) read, so
    a single-quoted shell argument can hold a line break; any other backslash stays as it is."""
    if text is None:
        return None
    return re.sub(r"\\\\|\\n|\\t", lambda m: {"\\\\": "\\", "\\n": "\n", "\\t": "\t"}[m.group()], text)


TemplateOption = Annotated[str | None, typer.Option(help="input template with {input}; \\n, \\t and \\\\ are read as "
                                                    "newline, tab and backslash", show_default=False,
                                                    callback=read_escapes)]


FormatOption = Annotated[str | None, typer.Option("--format", help="text (the template is the model input) or chat "
                                                  "(the template is the user message, through the model's chat template)",
                                                  show_default=False)]


SystemOption = Annotated[str | None, typer.Option("--system", help="a chat-format task's system message (escapes "
                                                  "as in --template)", show_default=False, callback=read_escapes)]


LabelsOption = Annotated[
    str | None, typer.Option(help="classification labels: 0,1 or pos=positive,neg=negative", show_default=False)
]


def parse_labels(text: str) -> dict[str, str]:
    """`0,1` or `pos=positive,neg=negative` → {label: verbalizer}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, _, verbalizer = item.partition("=")
        labels[label] = verbalizer or label
    return labels


def open_registry(uri: str | None, create: bool = False) -> Registry:
    """The registry `--registry` names. A folder named explicitly must exist unless the
    command creates what it registers (`create`): a mistyped path is an error, not a new
    empty registry. The default registry is made on first use."""
    if not uri:
        return Registry(default_registry_uri())
    return Registry(uri, create=create)


def base_model_of(reg: Registry, given: str | None) -> str:
    """`--base-model` if given, else the base model every task of the registry was trained
    on (said aloud). Tasks are on one base model when their fingerprints are equal, whatever
    names they recorded it under (an embedded id and its cache folder, two copies of one
    checkpoint); it is named by its embedded or Hub id when one is known. Tasks on different
    base models are refused with the list."""
    if given:
        return given
    from promptmux.models.loading import model_identity

    models: list[tuple[BaseModelFingerprint, set[str], list[str]]] = []  # (fingerprint, its names, its tasks)
    for name in reg.tasks.names():
        try:
            record = reg.tasks.get(name)
        except PromptmuxError:  # an unreadable task is reported where it is used
            continue
        same = next((m for m in models if m[0].misfit(record.base_fingerprint) is None), None)
        if same is None:
            same = (record.base_fingerprint, set(), [])
            models.append(same)
        same[1].add(model_identity(record.spec.base_model))
        same[2].append(name)
    if len(models) > 1:
        listing = "; ".join(f"{_preferred(names)}: {', '.join(tasks)}" for _, names, tasks in models)
        raise PromptmuxError(f"the registry's tasks were trained on different base models ({listing}); "
                             "choose one with --base-model")
    if not models:
        return DEFAULT_BASE_MODEL
    model = _preferred(models[0][1])
    err_console.print(f"base model {model}: the one every task in {reg.uri} was trained on", highlight=False)
    return model


def _preferred(names: set[str]) -> str:
    """Of the names one base model was recorded under, an id before a path."""
    return min(names, key=lambda name: (name.startswith((".", "/", "~")), name))


def print_json(payload: Any) -> None:
    """Print JSON for scripts (pydantic models and lists of them are dumped in JSON mode)."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    elif isinstance(payload, list):
        payload = [item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in payload]
    typer.echo(json.dumps(payload, indent=2, default=str))


def new_table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap instead of being cut off on narrow terminals."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


SHORT_METHODS = {name: entry.train_as or name.removesuffix("_prompt_tuning") for name, entry in CATALOG.items()}


HEADLINE = [  # (figure, its key, the untuned base model's key): what `registry show` puts first
    ("accuracy", "accuracy", "base_accuracy"), ("macro F1", "macro_f1", "base_macro_f1"),
    ("perplexity", "perplexity_after", "perplexity_before"), ("loss", "eval_loss_after", "eval_loss_before"),
]


def metrics_summary(metrics: dict[str, Any]) -> str:
    """Accuracy and macro F1 (classification) or perplexity and loss (generation), each beside
    the untuned base model's (its fair zero-shot form, and the task's template form where
    that differs); otherwise the first few numbers recorded."""
    figures = []
    for label, key, base in HEADLINE:
        if isinstance(metrics.get(key), int | float):
            against = f" (base {metrics[base]:.3f})" if isinstance(metrics.get(base), int | float) else ""
            template = metrics.get(f"template_{base}")
            if against and isinstance(template, int | float) and template != metrics[base]:
                against = f" (base {metrics[base]:.3f}, its template {template:.3f})"
            figures.append(f"{label} {metrics[key]:.3f}{against}")
    if figures:
        return ", ".join(figures[:2])
    flat = {key: value for key, value in metrics.items() if isinstance(value, int | float)}
    return ", ".join(f"{key}={value:.4g}" for key, value in list(flat.items())[:4])
