"""The `promptmux` command line.

The root app lives here, in the package every other one depends on; `serving` and
`tasks` contribute their sub-commands through the `promptmux.commands` entry-point
group, so this package never imports them. Every command that touches the registry
takes `--registry URI` (default `$PROMPTMUX_REGISTRY`, else a per-user directory).
"""

import functools
import json
import os
import re
import sys
import warnings
from importlib.metadata import entry_points
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from promptmux.registry.errors import PromptmuxError, describe
from promptmux.registry.names import parse_version
from promptmux.registry.registry import REGISTRY_ENV, Registry, default_registry_uri
from promptmux.registry.schemas import (
    DEFAULT_BASE_MODEL,
    BaseModelFingerprint,
    RolloutSpec,
    RolloutVariant,
    TaskKind,
    TaskSpec,
    VersionView,
)

# Piped output (logs, CI) gets room for whole tables; a terminal keeps its own width.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="promptmux",
    help="Multi-task soft-prompt registry and serving runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: fits 80 columns, names defaults and environment variables
)
registry_app = typer.Typer(help="Inspect and edit the soft-prompt registry.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(registry_app, name="registry")

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
    from promptmux.registry.base_models import model_identity

    models: list[tuple[BaseModelFingerprint, set[str], list[str]]] = []  # (fingerprint, its names, its tasks)
    for name in reg.list_tasks():
        try:
            record = reg.get_task(name)
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


def _table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap instead of being cut off on narrow terminals."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


SHORT_METHODS = {"prompt_tuning": "prompt", "p_tuning": "p-tuning", "prefix_tuning": "prefix",
                 "multitask_prompt_tuning": "multitask"}
HEADLINE = [  # (figure, its key, the untuned base model's key): what `registry show` puts first
    ("accuracy", "accuracy", "base_accuracy"), ("macro F1", "macro_f1", "base_macro_f1"),
    ("perplexity", "perplexity_after", "perplexity_before"), ("loss", "eval_loss_after", "eval_loss_before"),
]


def _metrics_summary(metrics: dict[str, Any]) -> str:
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


@registry_app.command("list")
def list_tasks(registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """List tasks with their versions, aliases and rollout."""
    reg = open_registry(registry)
    views = [reg.show(name) for name in reg.list_tasks()]
    if as_json:
        print_json([
            {
                "task": view.spec.name,
                "kind": view.spec.kind.value,
                "base_model": view.spec.base_model,
                "versions": [v.manifest.version for v in view.versions],
                "aliases": view.aliases,
                "rollout": view.rollout.model_dump(mode="json") if view.rollout else None,
            }
            for view in views
        ])
        return
    table = _table("task", "kind", "base model", "versions", "latest", "aliases", "rollout", title=f"registry {reg.uri}")
    for view in views:
        live = [v.manifest.version for v in view.versions if not v.archived]
        table.add_row(
            view.spec.name,
            view.spec.kind.value,
            view.spec.base_model,
            str(len(view.versions)),
            str(max(live)) if live else "-",
            ", ".join(f"{name}→{version}" for name, version in sorted(view.aliases.items())) or "-",
            _rollout_text(view.rollout),
        )
    console.print(table)


def _rollout_text(rollout: RolloutSpec | None) -> str:
    if rollout is None:
        return "-"
    total = sum(variant.weight for variant in rollout.variants)
    names = [v.name if v.name == f"v{v.version}" else f"{v.name} (v{v.version})" for v in rollout.variants]
    return " / ".join(f"{name}:{100 * v.weight / total:.0f}%" for name, v in zip(names, rollout.variants))


@registry_app.command("show")
def show(task: str, registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """Show a task's spec, versions (aliases, sha256, metrics, directory URI) and rollout."""
    view = open_registry(registry).show(task)
    if as_json:
        payload = view.model_dump(mode="json")
        payload["versions"] = [
            {
                "version": v.manifest.version,
                "aliases": v.aliases,
                "archived": v.archived,
                "sha256": v.manifest.sha256,
                "metrics": v.manifest.metrics,
                "uri": v.uri,
                "manifest": v.manifest.model_dump(mode="json"),
            }
            for v in view.versions
        ]
        print_json(payload)
        return
    spec = view.spec
    console.print(f"[bold]{spec.name}[/bold] ({spec.kind.value}) on {spec.base_model}")
    console.print(f"template: {spec.template!r}" + (f" (chat format, system {spec.system!r})" if spec.format == "chat" else ""))
    if spec.labels:
        console.print("labels: " + ", ".join(f"{k} → {v!r}" for k, v in spec.labels.items()))
    console.print(f"rollout: {_rollout_text(view.rollout)}")
    rows = _eval_row_sets(view.versions)
    table = _table("version", "aliases", "method, init", "tokens", "created", "metrics", "rows", "sha256", "note")
    for v in view.versions:
        m = v.manifest
        table.add_row(
            f"{m.version}{' (archived)' if v.archived else ''}",
            ", ".join(v.aliases) or "-",
            f"{SHORT_METHODS[m.method]}{'' if m.task_id is None else f' {m.task_id}'}, {m.init_method}",
            f"{m.num_virtual_tokens} {m.dtype}",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
            _metrics_summary(m.metrics) or "-",
            rows.get(m.version, "-"),
            m.sha256[:12],
            m.note,
        )
    console.print(table)
    if len(set(rows.values())) > 1:
        groups = "; ".join(f"{name}: {', '.join(str(n) for n, r in rows.items() if r == name)}"
                           for name in sorted(set(rows.values())))
        err_console.print(f"note: these versions were evaluated on different held-out rows ({groups}); compare "
                          "metrics only within one set of rows", highlight=False)


def _eval_row_sets(versions: list[VersionView]) -> dict[int, str]:
    """Version → a letter per set of held-out rows its metrics were measured on (`eval_rows`,
    a digest of the rows), for the versions that recorded one."""
    letters: dict[str, str] = {}
    found = {}
    for v in versions:
        digest = v.manifest.metrics.get("eval_rows")
        if isinstance(digest, str):
            found[v.manifest.version] = letters.setdefault(digest, chr(ord("A") + len(letters) % 26))
    return found


@registry_app.command("import")
def import_adapter(
    peft_dir: Annotated[str, typer.Argument(help="PEFT adapter directory (path or URL): prompt tuning, P-tuning, "
                                            "prefix tuning or multitask prompt tuning")],
    task: Annotated[str, typer.Option("--task", help="task to register the prompt under")],
    task_id: Annotated[int | None, typer.Option("--task-id", min=0, help="multitask prompt tuning: which of the "
                                                "adapter's tasks this one serves")] = None,
    base_model: BaseModelOption = None,
    kind: KindOption = None,
    template: TemplateOption = None,
    labels: LabelsOption = None,
    task_format: FormatOption = None,
    system: SystemOption = None,
    note: Annotated[str, typer.Option(help="free-text note stored with the version")] = "",
    trust_remote_code: TrustRemoteCode = False,
    registry: RegistryOption = "",
    as_json: JsonOption = False,
) -> None:
    """Register a PEFT prompt-learning adapter as the task's next version, its files kept as
    PEFT wrote them. A new task is created as the folder's `promptmux-task.json` says (a
    promptmux export), else as generation with template {input}; --kind, --template,
    --labels, --format and --system override either."""
    from promptmux.registry.base_models import (
        check_base_model,
        check_chat_template,
        fingerprint,
        load_model,
        load_tokenizer,
        model_identity,
    )

    reg = open_registry(registry, create=True)
    named_by_adapter = _adapter_base_model(peft_dir)  # the adapter is checked before any model loads
    exported = reg.read_export(peft_dir)
    exported_spec = exported[0].spec if exported else None
    existing = reg.get_task(task).spec if reg.has_task(task) else None
    model_id = base_model or next((s.base_model for s in (existing, exported_spec) if s), None) or named_by_adapter
    if model_id is None:
        raise PromptmuxError("the adapter does not name its base model: pass --base-model")
    model_id = model_identity(model_id)
    flags = {"kind": kind, "template": template, "labels": parse_labels(labels) if labels else None,
             "format": task_format, "system": system}
    described = {key: getattr(exported_spec, key) for key in flags} if exported_spec else {}
    described |= {key: value for key, value in flags.items() if value is not None}
    if existing is not None:
        differing = [key for key, value in described.items() if getattr(existing, key) != value]
        if differing:
            raise PromptmuxError(f"task {task!r} exists with another {', '.join(differing)} than the import's; "
                                 "--kind, --template, --labels, --format, --system and an export's task describe a new task")
    spec = existing or TaskSpec.model_validate({**(exported_spec.model_dump() if exported_spec else {}),
                                               **described, "name": task, "base_model": model_id})
    check_base_model(model_id)
    if spec.format == "chat":
        check_chat_template(load_tokenizer(model_id, trust_remote_code), model_id)
    model = load_model(model_id, dtype="float32", trust_remote_code=trust_remote_code)
    manifest = reg.import_peft(peft_dir, task, fingerprint(model), base_model=model_id, note=note, spec=spec,
                               task_id=task_id)
    if as_json:
        print_json({"task": task, "version": manifest.version, "uri": reg.version_uri(task, manifest.version)})
    else:
        method = manifest.method.replace("_", " ")
        console.print(f"registered {task} version {manifest.version} ({spec.kind.value} task, {method})")


def _adapter_base_model(peft_dir: str) -> str | None:
    """The base model an adapter names; reading it checks that the adapter folder is there."""
    import fsspec

    try:
        with fsspec.open(f"{peft_dir.rstrip('/')}/adapter_config.json") as handle:
            return json.load(handle).get("base_model_name_or_path") or None
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as exc:
        raise PromptmuxError(f"{peft_dir}: not a PEFT adapter folder: cannot read adapter_config.json ({exc})") from exc


@registry_app.command("export")
def export(
    task: str,
    version: Annotated[str, typer.Argument(help="version number, alias or 'latest'")],
    destination: Annotated[str, typer.Argument(help="directory to write the PEFT adapter to")],
    registry: RegistryOption = "",
) -> None:
    """Write a version as a PEFT adapter directory (loadable with PeftModel.from_pretrained)."""
    reg = open_registry(registry)
    manifest = reg.resolve(task, version)
    reg.export(task, manifest.version, destination)
    console.print(f"exported {task} version {manifest.version} to {destination}")


@registry_app.command("alias")
def alias(
    task: str,
    name: Annotated[str, typer.Argument(help="alias name, e.g. production or staging")],
    version: Annotated[str | None, typer.Argument(help="version number, or another alias to copy")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="remove the alias")] = False,
    registry: RegistryOption = "",
) -> None:
    """Point an alias at a version (or --delete it)."""
    reg = open_registry(registry)
    if delete:
        reg.delete_alias(task, name)
        console.print(f"deleted alias {name} of {task}")
        return
    if version is None:
        raise PromptmuxError("give the VERSION to point the alias at, or --delete")
    target = reg.resolve(task, version).version
    reg.set_alias(task, name, target)
    console.print(f"{task}:{name} → version {target}")


@registry_app.command("rollout")
def rollout(
    task: str,
    split: Annotated[list[str] | None, typer.Argument(help="VERSION=WEIGHT pairs, e.g. 3=90 4=10")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the rollout")] = False,
    sticky: Annotated[bool, typer.Option("--sticky/--no-sticky", help="same routing key, same variant")] = True,
    auto: Annotated[bool, typer.Option("--auto", help="CONTROL=W CANDIDATE=W: the server's controller steps the "
                                       "candidate up on feedback, then promotes it or rolls it back")] = False,
    steps: Annotated[str | None, typer.Option(help="with --auto: the candidate's shares after the first, "
                                              "in percent [default: 25,50]")] = None,
    min_samples: Annotated[int, typer.Option(min=1, help="with --auto: candidate outcomes per step")] = 30,
    max_samples: Annotated[int, typer.Option(min=2, help="with --auto: outcomes per version after which, "
                                             "with no difference, the control stays")] = 1000,
    registry: RegistryOption = "",
    as_json: JsonOption = False,
) -> None:
    """Set (or --clear, or show) a weighted traffic split between versions."""
    reg = open_registry(registry)
    if clear:
        reg.clear_rollout(task)
        console.print(f"cleared the rollout of {task}")
        return
    variants = [_parse_variant(item) for item in split or []]
    if auto:
        from promptmux.registry.policy import RolloutPolicy
        from promptmux.registry.sequential import SequentialTest

        if len(variants) != 2:
            raise PromptmuxError("--auto takes two versions: CONTROL=WEIGHT CANDIDATE=WEIGHT, e.g. 1=95 2=5")
        control, candidate = sorted(variants, key=lambda v: -v.weight)
        first = 100 * candidate.weight / (control.weight + candidate.weight)
        later = _parse_steps(steps or "25,50")
        reg.set_auto_rollout(task, RolloutPolicy(
            control=control.version, candidate=candidate.version, steps=[first, *(s for s in later if s > first)],
            min_samples_per_step=min_samples, test=SequentialTest(max_samples=max_samples)), reason="--auto")
    elif variants:
        reg.set_rollout(task, RolloutSpec(variants=variants, sticky=sticky))
        total = sum(variant.weight for variant in variants)
        if abs(total - 100) > 1e-9:
            err_console.print(f"note: the weights add up to {total:g}, not 100; each share is its weight over "
                              f"{total:g}", highlight=False)
    current = reg.rollout(task)
    if as_json:
        print_json(current.model_dump(mode="json") if current else None)
    else:
        console.print(f"{task} rollout: {_rollout_text(current)}")


def _parse_steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PromptmuxError(f"invalid --steps {text!r}: expected percentages, e.g. 25,50") from None


@registry_app.command("history")
def history(task: str, registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """Every change to how a task is served: alias moves, rollouts, automatic decisions."""
    changes = open_registry(registry).history(task)
    if as_json:
        print_json([change.model_dump(mode="json") for change in changes])
        return
    table = Table(title=f"history of {task}")
    for column in ("when (UTC)", "actor", "change"):
        table.add_column(column)
    for change in changes:
        table.add_row(change.at.strftime("%Y-%m-%d %H:%M:%S"), change.actor, change.summary())
    console.print(table)


@registry_app.command("rollout-status")
def rollout_status(
    task: str,
    at: Annotated[int | None, typer.Option("--at", min=1, help="the Nth automatic rollout of the task, oldest "
                                           "first [default: the last]")] = None,
    registry: RegistryOption = "",
    as_json: JsonOption = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="draw each side's score over time into this PNG")] = None,
) -> None:
    """An automatic rollout, running or ended, per version: outcomes, mean score and interval,
    requests, errors, p99; the verdict so far, or the decision that ended it and its figures."""
    from promptmux.registry.auto_rollout import OutcomeLog, review

    reg = open_registry(registry)
    experiments = reg.experiments(task)
    if not experiments:
        raise PromptmuxError(f"task {task!r} has had no automatic rollout (start one with: "
                             f"promptmux registry rollout {task} 1=95 2=5 --auto)")
    if at is not None and at > len(experiments):
        raise PromptmuxError(f"--at {at}: task {task!r} has had {len(experiments)} automatic rollout(s)")
    number = at or len(experiments)
    log = OutcomeLog(reg, task)
    rollout = review(reg, experiments[number - 1], log)
    if plot is not None:
        from promptmux.registry.rollout_plot import plot_rollout

        plot_rollout(task, rollout, log.read(), plot)  # read once: the log keeps what it has read
        err_console.print(f"wrote {plot}", highlight=False)
    if as_json:
        print_json({**rollout.figures, "experiment": rollout.policy.experiment, "rollout": number,
                    "rollouts": len(experiments), "status": rollout.status, "ended_at": rollout.ended_at,
                    "reason": rollout.reason})
        return
    console.print(f"{task}: automatic rollout {number} of {len(experiments)} ({rollout.policy.experiment}), "
                  f"{rollout.headline()}", highlight=False)
    table = Table()
    for column in ("side", "version", "outcomes", "mean", "95% interval", "requests", "errors", "p99 ≤"):
        table.add_column(column)
    for side in ("control", "candidate"):
        arm = rollout.figures[side]
        table.add_row(side, str(arm["version"]), str(arm["outcomes"]), f"{arm['mean']:.3f}",
                      f"{arm['interval'][0]:.3f} – {arm['interval'][1]:.3f}", str(arm["requests"]),
                      f"{arm['error_rate']:.1%}", f"{arm['p99_s']:g} s")
    console.print(table)
    figures = rollout.figures
    verdict = f"verdict so far: {figures['verdict']}" if rollout.status == "running" else \
        f"decided on: {figures['verdict']}" if rollout.decision else f"verdict when stopped: {figures['verdict']}"
    console.print(f"{verdict} (always-valid p {figures['p_value']:.4f}, difference {figures['difference']:+.3f})")


def _parse_variant(item: str) -> RolloutVariant:
    version, sep, weight = item.partition("=")
    number = parse_version(version.strip())
    try:
        share = float(weight)
    except ValueError:
        sep = ""
    if not sep or number is None:
        raise PromptmuxError(f"invalid rollout entry {item!r}: expected VERSION=WEIGHT, e.g. 3=90")
    return RolloutVariant(version=number, weight=share)


@registry_app.command("archive")
def archive(task: str, version: int, registry: RegistryOption = "") -> None:
    """Archive a version (refused while an alias or the rollout points at it)."""
    open_registry(registry).archive(task, version)
    console.print(f"archived {task} version {version}")


@registry_app.command("unarchive")
def unarchive(task: str, version: int, registry: RegistryOption = "") -> None:
    """Bring an archived version back (it counts for latest again)."""
    open_registry(registry).unarchive(task, version)
    console.print(f"unarchived {task} version {version}")


@registry_app.command("delete")
def delete(
    task: str,
    force: Annotated[bool, typer.Option("--force", help="delete even while aliases or a rollout route to it")] = False,
    registry: RegistryOption = "",
) -> None:
    """Delete a task with all its versions (refused while an alias or a rollout routes to it)."""
    open_registry(registry).delete_task(task, force)
    console.print(f"deleted task {task}")


@registry_app.command("verify")
def verify(
    task: Annotated[str | None, typer.Argument(help="only this task")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="finish edits and rollout decisions left half-done")] = False,
    registry: RegistryOption = "",
    as_json: JsonOption = False,
) -> None:
    """Re-hash every version, check aliases and rollouts, find half-done edits; exit 1 if anything is wrong."""
    results = open_registry(registry).verify(task, repair=repair)
    bad = [r for r in results if not r.ok]
    repaired = [r for r in results if r.repaired]
    if as_json:
        print_json([{"task": r.task, "version": r.version, "ok": r.ok, "problem": r.problem, "repaired": r.repaired}
                    for r in results])
    else:
        for r in repaired:
            err_console.print(f"[yellow]{r.task}: repaired: {r.problem}[/yellow]", highlight=False)
        for r in bad:
            where = r.task if r.version is None else f"{r.task}@{r.version}"
            err_console.print(f"[red]{where}: {r.problem}[/red]", highlight=False)
        if any("half-done" in (r.problem or "") or "not applied" in (r.problem or "") for r in bad):
            err_console.print("run `promptmux registry verify --repair` to finish what was left half-done", highlight=False)
        console.print(f"verified {len(results) - len(bad)} of {len(results)} entries, {len(bad)} problem(s)"
                      + (f", {len(repaired)} repaired" if repaired else ""))
    if bad:
        raise typer.Exit(1)


@registry_app.command("gc")
def gc(
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="seconds; younger leftovers are kept")] = 3600,
    registry: RegistryOption = "",
) -> None:
    """Delete what writers killed mid-write left: staging directories and temporary files."""
    removed = open_registry(registry).collect_garbage(older_than)
    console.print(f"removed {removed} stale leftover{'' if removed == 1 else 's'} of killed writers")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"promptmux {package_version('promptmux')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                           callback=_print_version)] = False,
) -> None:
    """Multi-task soft-prompt registry and serving runtime."""


@functools.cache
def _load_plugins() -> None:
    for entry in entry_points(group="promptmux.commands"):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


def main() -> None:
    # Quiet transformers and the Hub without importing them (they load only in the commands
    # that use a model): no info logs, no download or weight-loading bars.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    _load_plugins()
    try:
        app()
    except PromptmuxError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except ValidationError as exc:
        problems = describe(exc.errors())
        err_console.print(f"[red]error:[/red] {problems}")
        sys.exit(1)
    except OSError as exc:  # a full disk or a refused write outside the registry's own edits
        where = f" ({exc.filename})" if exc.filename else ""
        err_console.print(f"[red]error:[/red] {exc.strerror or exc}{where}", highlight=False)
        sys.exit(1)
