"""`promptmux registry ...`: list, show, import, export, history, archive, delete, verify and
collect garbage: the registry's records, read and edited from the command line.
"""

import json
from typing import Annotated

import typer
from rich.table import Table

from promptmux.cli.common import (
    SHORT_METHODS,
    BaseModelOption,
    FormatOption,
    JsonOption,
    KindOption,
    LabelsOption,
    RegistryOption,
    SystemOption,
    TemplateOption,
    TrustRemoteCode,
    metrics_summary,
    new_table,
    open_registry,
    parse_labels,
    print_json,
)
from promptmux.core.errors import PromptmuxError
from promptmux.core.limits import limits
from promptmux.registry.schemas import (
    RolloutSpec,
    TaskSpec,
    VersionView,
)
from promptmux.tasks.progress import console, err_console

registry_app = typer.Typer(help="Inspect and edit the soft-prompt registry.", no_args_is_help=True, rich_markup_mode=None)


@registry_app.command("list")
def list_tasks(registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """List tasks with their versions, aliases and rollout."""
    reg = open_registry(registry)
    views = [reg.show(name) for name in reg.tasks.names()]
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
    table = new_table("task", "kind", "base model", "versions", "latest", "aliases", "rollout", title=f"registry {reg.uri}")
    for view in views:
        live = [v.manifest.version for v in view.versions if not v.archived]
        table.add_row(
            view.spec.name,
            view.spec.kind.value,
            view.spec.base_model,
            str(len(view.versions)),
            str(max(live)) if live else "-",
            ", ".join(f"{name}→{version}" for name, version in sorted(view.aliases.items())) or "-",
            rollout_text(view.rollout),
        )
    console.print(table)


def rollout_text(rollout: RolloutSpec | None) -> str:
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
    console.print(f"rollout: {rollout_text(view.rollout)}")
    rows = _eval_row_sets(view.versions)
    table = new_table("version", "aliases", "method, init", "tokens", "created", "metrics", "rows", "sha256", "note")
    for v in view.versions:
        m = v.manifest
        table.add_row(
            f"{m.version}{' (archived)' if v.archived else ''}",
            ", ".join(v.aliases) or "-",
            f"{SHORT_METHODS[m.method]}{'' if m.task_id is None else f' {m.task_id}'}, {m.init_method}",
            f"{m.num_virtual_tokens} {m.dtype}",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
            metrics_summary(m.metrics) or "-",
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
    task_id: Annotated[int | None, typer.Option("--task-id", help="multitask prompt tuning: which of the "
                                                "adapter's tasks this one serves (from 0)")] = None,
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
    from promptmux.models.inputs import check_chat_template
    from promptmux.models.loading import check_base_model, fingerprint, load_model, load_tokenizer, max_positions, model_identity

    if task_id is not None and task_id < 0:
        raise PromptmuxError(f"--task-id {task_id}: a multitask adapter's tasks are numbered from 0")
    reg = open_registry(registry, create=True)
    named_by_adapter = _adapter_base_model(peft_dir)  # the adapter is checked before any model loads
    exported = reg.transfer.read_export(peft_dir)
    exported_spec = exported[0].spec if exported else None
    existing = reg.tasks.get(task).spec if reg.tasks.exists(task) else None
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
    limits().check_spec(spec)
    check_base_model(model_id, offline=True)  # an import never downloads a model
    if spec.format == "chat":
        check_chat_template(load_tokenizer(model_id, trust_remote_code), model_id)
    model = load_model(model_id, dtype="float32", trust_remote_code=trust_remote_code)
    manifest = reg.transfer.import_peft(peft_dir, task, fingerprint(model), base_model=model_id, note=note, spec=spec,
                                        task_id=task_id, positions=max_positions(model.config))
    if as_json:
        print_json({"task": task, "version": manifest.version, "uri": reg.versions.uri(task, manifest.version)})
    else:
        method = manifest.method.replace("_", " ")
        console.print(f"registered {task} version {manifest.version} ({spec.kind.value} task, {method})")


def _adapter_base_model(peft_dir: str) -> str | None:
    """The base model an adapter names; reading it checks that the adapter folder is there."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(f"{peft_dir.rstrip('/')}/adapter_config.json")
        limits().check_file("adapter_config_bytes", fs.size(path), f"{peft_dir}: adapter_config.json")
        config = json.loads(fs.cat_file(path))
        return (config.get("base_model_name_or_path") or None) if isinstance(config, dict) else None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    manifest = reg.aliases.resolve(task, version)
    reg.transfer.export(task, manifest.version, destination)
    console.print(f"exported {task} version {manifest.version} to {destination}")


@registry_app.command("history")
def history(task: str, registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """Every change to a task: registrations and imports, alias moves, rollouts, automatic decisions, archiving."""
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
