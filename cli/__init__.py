"""The `promptmux` command line: the root app, composed above the rooms it drives.

It sits at the top of the layers, above every room it drives, and takes each room's
commands directly: `registry ...` (records and rollouts: `records.py`,
`rollouts.py`), `tenants ...` (`tenants.py`), `train`, `tune` and `demo` (tasks), `generate`, `serve`
and `bench` (`serve.py`), `ui` (`console.py`).
"""

import os
import sys
import warnings
from importlib.metadata import version as package_version
from typing import Annotated

import typer
from pydantic import ValidationError

from promptmux.cli.console import ui_command
from promptmux.cli.rollouts import registry_app
from promptmux.cli.serve import bench_app, generate, serve_command
from promptmux.cli.tenants import tenants_app
from promptmux.cli.train import train
from promptmux.cli.tune import tune
from promptmux.core.errors import PromptmuxError, describe
from promptmux.tasks.demo import demo
from promptmux.tasks.progress import err_console

app = typer.Typer(
    name="promptmux",
    help="Multi-task soft-prompt registry and serving runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: fits 80 columns, names defaults and environment variables
)
app.add_typer(registry_app, name="registry")
app.add_typer(tenants_app, name="tenants")
app.command("train")(train)
app.command("tune")(tune)
app.command("demo")(demo)
app.command("generate")(generate)
app.command("serve")(serve_command)
app.command("ui")(ui_command)
app.add_typer(bench_app, name="bench")


def _print_version(asked: bool) -> None:
    if asked:
        print(f"promptmux {package_version('promptmux')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                           callback=_print_version)] = False,
) -> None:
    """Multi-task soft-prompt registry and serving runtime."""


def main() -> None:
    # Quiet transformers and the Hub without importing them (they load only in the commands
    # that use a model): no info logs, no download or weight-loading bars.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
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
