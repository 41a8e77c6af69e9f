"""`promptmux tenants add | list | revoke`: the teams that share one endpoint, each with a
key that opens only its own tasks, its quotas and its fair-share weight. A key is printed
once, when its tenant is added; the registry keeps only its digest."""

from typing import Annotated

import typer

from promptmux.cli.common import JsonOption, RegistryOption, new_table, open_registry, print_json
from promptmux.tasks.progress import console, err_console

tenants_app = typer.Typer(help="Tenants: keys scoped to tasks, with quotas.", no_args_is_help=True, rich_markup_mode=None)


@tenants_app.command("add")
def add(
    name: str,
    tasks: Annotated[list[str], typer.Option("--tasks", metavar="PATTERN", help="a task name the tenant may use; * matches any run of "
                                             "characters (repeat for more)")],
    rate: Annotated[float | None, typer.Option("--rate", min=0.001, help="requests per minute, endpoint-wide")] = None,
    tokens_per_minute: Annotated[int | None, typer.Option("--tokens-per-minute", min=1,
                                                          help="generated tokens per minute, endpoint-wide")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="requests in flight at once")] = None,
    weight: Annotated[float, typer.Option("--weight", min=0.001, help="share of decode slots while others wait")] = 1.0,
    registry: RegistryOption = "",
) -> None:
    """Add a tenant and print its key, once, alone on stdout (`KEY=$(promptmux tenants add ...)`):
    keep it, the registry stores only its digest."""
    record, key = open_registry(registry).tenants.add(name, tasks, requests_per_minute=rate,
                                                      tokens_per_minute=tokens_per_minute, concurrency=concurrency,
                                                      weight=weight)
    err_console.print(f"added tenant {record.name} (tasks {', '.join(record.tasks)}); its key, shown once, on stdout:",
                      highlight=False)
    print(key)


@tenants_app.command("list")
def list_tenants(registry: RegistryOption = "", as_json: JsonOption = False) -> None:
    """The tenants, their tasks and limits (never their keys)."""
    records = open_registry(registry).tenants.all()
    if as_json:
        print_json([record.model_dump(mode="json", exclude={"key_sha256"}) for record in records])
        return
    table = new_table("tenant", "tasks", "requests/min", "tokens/min", "concurrency", "weight", "added", "revoked")
    for r in records:
        table.add_row(r.name, ", ".join(r.tasks), _limit(r.requests_per_minute), _limit(r.tokens_per_minute),
                      _limit(r.concurrency), f"{r.weight:g}", f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-")
    console.print(table)


@tenants_app.command("revoke")
def revoke(name: str, registry: RegistryOption = "") -> None:
    """Remove a tenant: its key opens nothing from the servers' next refresh on."""
    open_registry(registry).tenants.revoke(name)
    console.print(f"revoked tenant {name}; servers refuse its key from their next refresh on", highlight=False)


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
