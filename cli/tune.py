"""`promptmux tune`: the best prompt for a task, chosen on validation across methods and
settings, its trials run by Ray Tune (Ray is imported only here, when the command runs)."""

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from promptmux.cli.common import BaseModelOption, RegistryOption, open_registry, print_json
from promptmux.cli.train import task_data
from promptmux.core.errors import PromptmuxError
from promptmux.tasks.config import DEFAULT_LR
from promptmux.tasks.progress import console, err_console


def tune(
    data: Annotated[Path, typer.Option("--data", help="training data (its validation share chooses the trial)")],
    spec_file: Annotated[Path | None, typer.Option("--spec", help="task spec (YAML/JSON TaskSpec, optional training: "
                                                   "section: the settings a trial does not search)")] = None,
    task: Annotated[str | None, typer.Option("--task", help="task name (overrides the spec's)")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval-data", help="test data, evaluated once for the chosen "
                                                   "trial only (else --eval-fraction of --data)")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="without --eval-data: the share of rows "
                                                 "held out as the test set")] = 0.2,
    limit: Annotated[int | None, typer.Option(min=1, help="use only the first N training records")] = None,
    trials: Annotated[int, typer.Option(min=1, help="trials to draw from the search space")] = 12,
    search: Annotated[Path | None, typer.Option("--search", help="YAML search space: methods (each with its lr "
                                                "list), num_virtual_tokens, epochs, init [default: from "
                                                "docs/quality.md]")] = None,
    methods: Annotated[str | None, typer.Option(help=f"only these methods, comma-separated ({', '.join(DEFAULT_LR)})")] = None,
    address: Annotated[str | None, typer.Option(help="a Ray cluster to run the trials on (auto, ray://HOST:PORT, or "
                                                "HOST:PORT) [default: a new local one]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the search under --output-dir: no finished "
                                         "trial runs again")] = False,
    cpus_per_trial: Annotated[float, typer.Option(min=0.1, help="CPUs (and torch threads) per trial")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(min=0, help="GPUs per trial")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="seed of the trials drawn, each trial's training and the "
                                             "validation split [default: the spec's, else 42]")] = None,
    base_model: BaseModelOption = None,
    registry: RegistryOption = "",
    alias: Annotated[str | None, typer.Option(help="point this alias at the chosen version")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="the search's state and the chosen run "
                                                    "[default: promptmux-runs/tune-TASK-TIME]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
) -> None:
    """Search methods and settings with Ray Tune (ASHA stops trials that trail), choose on the
    validation loss, evaluate the choice on the test set once and register it."""
    from promptmux.tasks.tune import DEFAULT_SEARCH, read_search, tune_task

    space = read_search(search) if search else DEFAULT_SEARCH
    if methods:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(space.methods))
        if unknown or not wanted:
            raise PromptmuxError(f"--methods {methods!r}: the search has {', '.join(space.methods)}")
        space = space.model_copy(update={"methods": {m: space.methods[m] for m in wanted}})
    if resume and output_dir is None:
        raise PromptmuxError("--resume needs the --output-dir of the search to continue")
    spec, config, train_set, held_out, data_fingerprint = task_data(
        spec_file, task, data, eval_data, eval_fraction, limit, {"name": task, "base_model": base_model}, {},
        {"seed": seed})
    reg = open_registry(registry, create=True)
    out = output_dir or Path("promptmux-runs") / f"tune-{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    result = tune_task(spec, train_set, held_out, config, reg, out, data_fingerprint, trials=trials, search=space,
                       address=address, resume=resume, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                       alias=alias, console=err_console)
    manifest = result.train.manifest
    if as_json:
        print_json({"task": spec.name, "version": manifest.version, "chosen": result.chosen, "trials": result.trials,
                    "stopped_by_asha": result.stopped_by_asha, "search_wall_s": result.wall_s,
                    "metrics": {k: v for k, v in result.train.metrics.items() if k != "tuning"}})
        return
    table = Table(title=f"{len(result.trials)} trials, chosen on validation loss ({result.stopped_by_asha} stopped by ASHA)")
    for column in ("#", "method", "lr", "tokens", "epochs", "init", "validation loss", "steps", "stopped early", ""):
        table.add_column(column)
    for row in result.trials:
        s = row["settings"]
        loss = "-" if row["best_val_loss"] is None else f"{row['best_val_loss']:.4f}"
        table.add_row(str(row["trial"]), s["method"], f"{s['lr']:g}", str(s["num_virtual_tokens"]), str(s["epochs"]),
                      s["init"] if s["method"] == "prompt" else "-", loss, str(row["steps"]), row["stopped_early"] or "-",
                      "chosen" if row["trial"] == result.chosen["trial"] else "")
    console.print(table)
    from promptmux.tasks.report import print_report

    console.print(f"registered {spec.name} version {manifest.version} (search {result.wall_s:g} s); test set, "
                  "evaluated once:", highlight=False)
    print_report(spec, result.train.metrics)
