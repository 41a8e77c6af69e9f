"""`promptmux registry alias | rollout | rollout-status | promote | rollback`: where a task's
traffic goes, set by hand or by an automatic rollout, the review of a rollout, running or
ended, and ending one by hand.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from promptmux.cli.common import JsonOption, RegistryOption, open_registry, print_json
from promptmux.cli.records import registry_app, rollout_text
from promptmux.core.errors import PromptmuxError
from promptmux.registry.history import MANUAL
from promptmux.registry.names import parse_version
from promptmux.registry.schemas import (
    RolloutSpec,
    RolloutVariant,
)
from promptmux.tasks.progress import console, err_console


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
        reg.aliases.delete(task, name)
        console.print(f"deleted alias {name} of {task}")
        return
    if version is None:
        raise PromptmuxError("give the VERSION to point the alias at, or --delete")
    target = reg.aliases.resolve(task, version).version
    reg.aliases.set(task, name, target)
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
        reg.rollouts.clear(task)
        console.print(f"cleared the rollout of {task}")
        return
    variants = [_parse_variant(item) for item in split or []]
    if auto:
        from promptmux.registry.policy import RolloutPolicy, SequentialTest

        if len(variants) != 2:
            raise PromptmuxError("--auto takes two versions: CONTROL=WEIGHT CANDIDATE=WEIGHT, e.g. 1=95 2=5")
        control, candidate = sorted(variants, key=lambda v: -v.weight)
        first = 100 * candidate.weight / (control.weight + candidate.weight)
        later = _parse_steps(steps or "25,50")
        reg.rollouts.start(task, RolloutPolicy(
            control=control.version, candidate=candidate.version, steps=[first, *(s for s in later if s > first)],
            min_samples_per_step=min_samples, test=SequentialTest(max_samples=max_samples)), reason="--auto")
    elif variants:
        reg.rollouts.set(task, RolloutSpec(variants=variants, sticky=sticky))
        total = sum(variant.weight for variant in variants)
        if abs(total - 100) > 1e-9:
            err_console.print(f"note: the weights add up to {total:g}, not 100; each share is its weight over "
                              f"{total:g}", highlight=False)
    current = reg.rollouts.get(task)
    if as_json:
        print_json(current.model_dump(mode="json") if current else None)
    else:
        console.print(f"{task} rollout: {rollout_text(current)}")


def _end_by_hand(task: str, action: str, registry: str) -> None:
    from promptmux.serving.rollouts.loop import OutcomeLog, end_by_hand

    reg = open_registry(registry)
    change = end_by_hand(reg, OutcomeLog(reg, task), action, MANUAL)
    console.print(f"{task}: {change.action} by {change.actor}, production → v{change.details['production']} "
                  f"({change.reason})", highlight=False)


@registry_app.command("promote")
def promote(task: str, registry: RegistryOption = "") -> None:
    """End the running automatic rollout now, production moving to the candidate (as the
    console's Promote button does)."""
    _end_by_hand(task, "promote", registry)


@registry_app.command("rollback")
def rollback(task: str, registry: RegistryOption = "") -> None:
    """End the running automatic rollout now, production staying on the control (as the
    console's Roll back button does)."""
    _end_by_hand(task, "rollback", registry)


def _parse_steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PromptmuxError(f"invalid --steps {text!r}: expected percentages, e.g. 25,50") from None


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
    from promptmux.serving.rollouts.loop import OutcomeLog
    from promptmux.serving.rollouts.review import review

    reg = open_registry(registry)
    experiments = reg.rollouts.experiments(task)
    if not experiments:
        raise PromptmuxError(f"task {task!r} has had no automatic rollout (start one with: "
                             f"promptmux registry rollout {task} 1=95 2=5 --auto)")
    if at is not None and at > len(experiments):
        raise PromptmuxError(f"--at {at}: task {task!r} has had {len(experiments)} automatic rollout(s)")
    number = at or len(experiments)
    log = OutcomeLog(reg, task)
    rollout = review(reg, experiments[number - 1], log)
    if plot is not None:
        from promptmux.serving.rollouts.plot import plot_rollout

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
        arm, none = rollout.figures[side], "no data yet"
        scored, served = arm["outcomes"] > 0, arm["requests"] > 0  # zeros would read as measured
        table.add_row(side, str(arm["version"]), str(arm["outcomes"]), f"{arm['mean']:.3f}" if scored else none,
                      f"{arm['interval'][0]:.3f} – {arm['interval'][1]:.3f}" if scored else none, str(arm["requests"]),
                      f"{arm['error_rate']:.1%}" if served else none, f"{arm['p99_s']:g} s" if served else none)
    console.print(table)
    figures = rollout.figures
    verdict = f"verdict so far: {figures['verdict']}" if rollout.status == "running" else \
        f"decided on: {figures['verdict']}" if rollout.decision else f"verdict when stopped: {figures['verdict']}"
    if all(figures[side]["outcomes"] for side in ("control", "candidate")):
        console.print(f"{verdict} (always-valid p {figures['p_value']:.4f}, difference {figures['difference']:+.3f})")
    else:
        console.print(f"{verdict} (no data yet: both sides need outcomes to be compared)")


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
