"""What the console's pages show, read from the registry alone: plain dicts, which the
templates render and the JSON endpoints return as they are.

Nothing here knows of HTTP or of who looks: the routes (`app.py`) check the viewer's scope
before they ask for a task.
"""

from datetime import datetime
from typing import Any

from promptmux.core.errors import NotFoundError
from promptmux.registry import Registry
from promptmux.registry.policy import RolloutPolicy
from promptmux.registry.traffic_store import TrafficCounts, TrafficTotals
from promptmux.serving.rollouts.loop import OutcomeLog, p99_ratio
from promptmux.serving.rollouts.plot import plotted
from promptmux.serving.rollouts.review import RolloutReview, review
from promptmux.serving.rollouts.series import difference_series

SIDES = ("control", "candidate")
METRIC_COLUMNS = (("base_model", "untuned"), ("template_base_model", "untuned, task template"), ("tuned", "tuned"))


class OutcomeLogs:
    """One incremental outcome log per task, kept between polls: a page polled every few
    seconds reads only the outcomes that arrived since its last look."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._logs: dict[str, OutcomeLog] = {}

    def of(self, task: str) -> OutcomeLog:
        return self._logs.setdefault(task, OutcomeLog(self.registry, task))


def task_rows(registry: Registry, names: list[str], traffic: TrafficTotals) -> list[dict[str, Any]]:
    """The tasks page: one row per task."""
    rows = []
    for name in names:
        try:
            record, aliases = registry.tasks.get(name), registry.aliases.of(name)
            versions = {v.version: v for v in registry.versions.all(name)}
            policy = registry.rollouts.policy(name)
        except NotFoundError:  # deleted since the listing
            continue
        shown = versions.get(aliases.get("production", 0)) or (versions[max(versions)] if versions else None)
        counts = traffic.tasks.get(name, TrafficCounts())
        rows.append({
            "name": name, "kind": record.spec.kind.value, "format": record.spec.format,
            "method": shown.method if shown else None, "versions": len(versions), "aliases": aliases,
            "experiment": _running(registry, name, policy), "requests": counts.requests, "error_rate": counts.error_rate,
        })
    return rows


def _running(registry: Registry, task: str, policy: RolloutPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"number": len(registry.rollouts.experiments(task)), "id": policy.experiment, "control": policy.control,
            "candidate": policy.candidate, "step": policy.step + 1, "steps": len(policy.steps), "share": policy.share}


def task_detail(registry: Registry, task: str) -> dict[str, Any]:
    """A task's page: its spec, its versions with their metrics and curves, its history."""
    view = registry.show(task)
    versions = []
    for version in sorted(view.versions, key=lambda v: -v.manifest.version):
        manifest = version.manifest
        metrics = manifest.metrics
        versions.append({
            "version": manifest.version, "aliases": version.aliases, "archived": version.archived,
            "method": manifest.method, "virtual_tokens": manifest.num_virtual_tokens, "base_model": manifest.base_model,
            "init": manifest.init_method, "parent": manifest.parent_version, "created_at": manifest.created_at,
            "imported_from": manifest.training.get("imported_from"), "note": manifest.note, "lr": manifest.training.get("lr"),
            "metrics": metric_table(metrics), "eval_examples": metrics.get("eval_examples"),
            "eval_rows": metrics.get("eval_rows"), "curve": metrics.get("learning_curve"),
        })
    experiments = registry.rollouts.experiments(task)
    return {
        "name": task, "spec": view.spec.model_dump(mode="json"), "versions": versions, "aliases": view.aliases,
        "previous": {alias: record.previous for alias, record in registry.aliases.records(task).items()
                     if record.previous is not None},
        "rollout": view.rollout.model_dump(mode="json") if view.rollout else None,
        "running": _running(registry, task, registry.rollouts.policy(task)),
        "experiments": [{"number": i, "id": p.experiment, "control": p.control, "candidate": p.candidate,
                         "started_at": p.started_at} for i, p in enumerate(experiments, start=1)],
        "history": [entry.model_dump(mode="json") for entry in reversed(registry.history(task))],
    }


def metric_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (metric, untuned, untuned with the task's template, tuned), for the numbers the
    evaluation recorded on each side."""
    sides = [(key, title) for key, title in METRIC_COLUMNS if isinstance(metrics.get(key), dict)]
    names = [name for key, _ in sides for name, value in metrics[key].items() if isinstance(value, int | float)]
    return [{"metric": name, **{title: metrics[key].get(name) for key, title in sides}} for name in dict.fromkeys(names)]


def experiment_view(registry: Registry, task: str, number: int | None, log: OutcomeLog) -> dict[str, Any]:
    """One automatic rollout (the `number`th, oldest first; the last by default), running or
    ended: its figures, guard rails, steps, decision and the series of its difference."""
    experiments = registry.rollouts.experiments(task)
    if not experiments:
        raise NotFoundError(f"task {task!r} has had no automatic rollout")
    number = number or len(experiments)
    if not 1 <= number <= len(experiments):
        raise NotFoundError(f"task {task!r} has had {len(experiments)} automatic rollout(s), not {number}")
    rollout = review(registry, experiments[number - 1], log)
    policy = rollout.policy
    ordered = plotted(rollout, log.read())
    return {
        "task": task, "number": number, "count": len(experiments), "experiment": policy.experiment,
        "status": rollout.status, "headline": rollout.headline(), "figures": rollout.figures,
        "control": policy.control, "candidate": policy.candidate, "step": policy.step + 1, "steps": policy.steps,
        "share": policy.share, "min_samples_per_step": policy.min_samples_per_step,
        "test": policy.test.model_dump(), "guards": _guards(policy, rollout),
        "moves": [{"at": _time(d.change.at), "from": d.change.details.get("from"), "to": d.change.details.get("to"),
                   "reason": d.change.reason} for d in rollout.steps],
        "decision": _decision(rollout), "outcomes": len(ordered), "series": difference_series(policy, ordered),
    }


def _guards(policy: RolloutPolicy, rollout: RolloutReview) -> list[dict[str, Any]]:
    candidate, control = rollout.figures["candidate"], rollout.figures["control"]
    served = control["requests"] and candidate["requests"]
    ratio = p99_ratio(policy, candidate["p99_s"], control["p99_s"]) if served else None
    return [
        {"name": "candidate error rate", "value": candidate["error_rate"] if candidate["requests"] else None,
         "limit": policy.max_error_rate, "unit": "share"},
        {"name": "candidate p99 latency / control's", "value": ratio, "limit": policy.max_p99_latency_ratio, "unit": "ratio"},
        {"name": "requests per version before the guard rails apply", "value": candidate["requests"],
         "limit": policy.guard_min_requests, "unit": "count"},
    ]


def _decision(rollout: RolloutReview) -> dict[str, Any] | None:
    if rollout.decision is None:
        return None
    change = rollout.decision.change
    return {"action": change.action, "actor": change.actor, "reason": change.reason, "at": _time(change.at),
            "production": rollout.decision.winner, "stats": change.stats}


def _time(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def tenant_rows(registry: Registry, traffic: TrafficTotals) -> list[dict[str, Any]]:
    """The tenants page: each tenant with its patterns, limits and last hour."""
    rows = []
    for tenant in registry.tenants.all():
        counts = traffic.tenants.get(tenant.name, TrafficCounts())
        rows.append({"name": tenant.name, "tasks": tenant.tasks, "requests_per_minute": tenant.requests_per_minute,
                     "tokens_per_minute": tenant.tokens_per_minute, "concurrency": tenant.concurrency,
                     "weight": tenant.weight, "revoked": tenant.revoked_at is not None,
                     "requests": counts.requests, "tokens": counts.tokens, "limited": counts.limited})
    return rows
