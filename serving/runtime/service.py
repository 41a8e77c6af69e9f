"""The serving runtime of one replica, independent of Ray: engine, routing, live registry
refresh, metrics, draining and feedback. Each request is one call (`serve`, run by
`answering.py`); the FastAPI app (`serving/http/app.py`) exposes it; Ray Serve hosts it.
"""

import asyncio
import logging
import os
import socket
import threading
import time

from promptmux.core.errors import InvalidRequestError
from promptmux.registry import PromptVersion, Registry
from promptmux.registry.policy import Outcome
from promptmux.serving.engine.client import EngineClient
from promptmux.serving.runtime.answering import Answering
from promptmux.serving.runtime.feedback import FeedbackIds
from promptmux.serving.runtime.metrics import ServingMetrics
from promptmux.serving.runtime.requests import Call
from promptmux.serving.runtime.results import Answers, AnswerStream
from promptmux.serving.runtime.routing import RegistryView
from promptmux.serving.runtime.settings import ServeSettings
from promptmux.serving.runtime.tenants import ADMIN, Caller, identify

log = logging.getLogger(__name__)
DRAIN_POLL_S = 0.05
DRAIN_FLUSH_S = 5.0
CUT_AT_DEADLINE = "the server shut down before this request finished; retry"


class InFlight:
    """Requests between their first byte in and their last byte out (counted by the HTTP
    layer), and whether new ones are refused because the replica is draining."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False


class PromptmuxService:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.metrics = ServingMetrics()
        self.client = EngineClient(settings.engine, self.registry.versions, on_step=self.metrics.batch_size.observe)
        self.metrics.watch_prompt_cache(self.client.cache_stats)
        self.view = RegistryView(self.registry, validate=self.client.load, on_rejected=self._rejected,
                                 on_unreadable=self._unreadable, on_broken=self._broken,
                                 on_broken_variant=self._broken_variant,
                                 retry_rejected_s=settings.retry_rejected_s,
                                 full_scan_interval_s=settings.full_scan_interval_s)
        self.view.refresh()
        self.metrics.watch_rollouts(lambda: {name: e.rollout for name, e in self.view.entries.items() if e.rollout})
        self.in_flight = InFlight()
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        key = settings.feedback_key.get_secret_value() if settings.feedback_key else None
        self.ids = FeedbackIds(bytes.fromhex(key) if key else self.registry.outcomes.feedback_key())
        self.answering = Answering(settings, self.client, self.view, self.ids, self.metrics)
        self._stopped = threading.Event()
        self._traffic_since = time.monotonic()
        self._refresher = threading.Thread(target=self._refresh_loop, name="promptmux-refresh", daemon=True)
        self._refresher.start()

    def _rejected(self, manifest: PromptVersion, problem: str) -> None:
        self.metrics.rejected_versions.labels(manifest.task, str(manifest.version)).inc()

    def _broken(self, task: str, alias: str, version: int | None) -> None:
        if version is not None:
            log.error("alias %s:%s points at version %s, which is not servable", task, alias, version)
        self.metrics.broken_aliases.labels(task, alias).set(0 if version is None else 1)

    def _broken_variant(self, task: str, variant: str, version: int | None) -> None:
        if version is not None:
            log.error("rollout variant %s of %s is version %s, which is not servable; its share falls back",
                      variant, task, version)
        self.metrics.broken_variants.labels(task, variant).set(0 if version is None else 1)

    def _unreadable(self, task: str, problem: str | None) -> None:
        self.metrics.unreadable_tasks.labels(task).set(0 if problem is None else 1)

    def _refresh_loop(self) -> None:
        while not self._stopped.wait(self.settings.refresh_interval_s):
            try:
                self.view.refresh()
                self._publish_served()
                self._publish_traffic()
            except Exception:  # keep serving the last good view whatever the registry does
                log.exception("registry refresh failed; keeping the previous routes")

    def _publish_served(self) -> None:
        """Append this window's figures of every task under a rollout to the registry."""
        rolling = {name for name, entry in self.view.entries.items() if entry.rollout is not None}
        for task, window in self.answering.served.take(self.replica, rolling).items():
            self.registry.outcomes.record_served(task, window)

    def _publish_traffic(self, now: bool = False) -> None:
        """Append this replica's traffic window to the registry once it spans `traffic_interval_s`."""
        if now or time.monotonic() - self._traffic_since >= self.settings.traffic_interval_s:
            self._traffic_since = time.monotonic()
            window = self.answering.traffic.take(self.replica)
            if window is not None:
                self.registry.traffic.record(window)

    def shutdown(self) -> None:
        self._stopped.set()
        try:
            self._publish_traffic(now=True)
        except Exception as exc:  # the registry may be gone at shutdown; the window is only statistics
            log.warning("could not write the last traffic window: %s", exc)
        self.client.shutdown()

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (the HTTP layer answers 503), let those in flight finish for up
        to `grace_s`, then end the rest: streams with an error event, the others with 503."""
        self.in_flight.draining = True
        log.warning("draining: %d requests in flight, %g s to finish", self.in_flight.count, grace_s)
        await self._until_idle(grace_s)
        if self.in_flight.count:
            log.warning("drain deadline: ending the %d requests still in flight", self.in_flight.count)
            self.client.close(CUT_AT_DEADLINE)
            await self._until_idle(DRAIN_FLUSH_S)

    async def _until_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.in_flight.count and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)

    # ------------------------------------------------------------- requests
    def identify(self, key: str | None) -> Caller | None:
        """Who a bearer key names (`tenants.identify`), by the tenants as last refreshed."""
        admin = self.settings.api_token.get_secret_value() if self.settings.api_token else None
        return identify(key, admin, self.view.tenants)

    async def serve(self, call: Call) -> Answers | AnswerStream:
        """The one runtime call of a request (`Answering.serve`)."""
        return await self.answering.serve(call)

    # ------------------------------------------------------------- feedback
    async def feedback(self, feedback_id: str, score: float | None, label: str | None, caller: Caller = ADMIN) -> bool:
        """Count one piece of feedback on a served request, durably, before answering: True for
        the one create-only claim of its id, False when the same feedback was counted already
        (by any replica), `ConflictError` (409) when different feedback was. A tenant sends
        feedback only on the answers it was given: any other id reads as a forged one."""
        served = self.ids.verify(feedback_id, caller.tenant and caller.name)
        spec = self.view.task(served.task, caller).record.spec
        if served.label is None and label is not None:
            raise InvalidRequestError(f"{served.task} is a {spec.kind.value} task: send a score in [0, 1], not a label")
        if served.label is not None:
            if label is None:  # a score would skip the check against the label answered
                raise InvalidRequestError(f"{served.task} is a classification task: send the gold label ('label'), not a score")
            if label not in spec.labels:
                raise InvalidRequestError(f"unknown label {label!r} for {served.task} (labels: {', '.join(spec.labels)})")
            score = float(label == served.label)
        outcome = Outcome(id=feedback_id, task=served.task, version=served.version, variant=served.variant,
                          experiment=served.experiment, score=score, label=label, predicted=served.label)
        counted = await asyncio.to_thread(self.registry.outcomes.record, outcome)
        if counted:
            labels = (served.task, str(served.version), served.variant)
            self.metrics.feedback.labels(*labels).inc()
            self.metrics.feedback_score.labels(*labels).inc(outcome.score)
        return counted

    # ------------------------------------------------------------- introspection
    def task_names(self, caller: Caller = ADMIN) -> list[str]:
        """The tasks the caller may see."""
        return sorted(name for name in self.view.entries if caller.sees(name))

    def task_summaries(self, caller: Caller = ADMIN) -> list[dict]:
        return [self.task_summary(name, caller=caller) for name in self.task_names(caller)]

    def task_summary(self, name: str, detail: bool = False, caller: Caller = ADMIN) -> dict:
        entry = self.view.task(name, caller)
        spec = entry.record.spec
        summary = {
            "task": name, "kind": spec.kind.value, "base_model": spec.base_model, "template": spec.template,
            "labels": spec.labels, "versions": sorted(entry.versions), "archived": sorted(entry.archived),
            "latest": entry.latest, "aliases": entry.aliases,
            "rollout": entry.rollout.model_dump(mode="json") if entry.rollout else None,
        }
        if detail:
            loaded = self.client.cache_stats().loaded
            summary["loaded"] = [key for key in loaded if key.split("@")[0] == name]
            summary["rejected"] = {f"{t}@{v}": problem for (t, v, _), problem in self.view.rejected.items() if t == name}
            summary["manifests"] = [m.model_dump(mode="json") for _, m in sorted(entry.versions.items())]
        return summary

    def model_ids(self, caller: Caller = ADMIN) -> list[tuple[str, int]]:
        """The OpenAI model ids the caller may name and be served by now, with their tasks'
        creation times: a task whose only version is archived, or an alias whose version cannot
        be served, is left out."""
        ids, view = [], self.view
        for name in self.task_names(caller):
            entry = view.entries[name]
            created = int(entry.record.created_at.timestamp())
            aliases = sorted(entry.aliases.keys() | entry.fallbacks.keys())
            names = [name] * view.servable(name) + [f"{name}:{alias}" for alias in aliases if view.servable(name, alias)]
            ids += [(model_id, created) for model_id in names]
        return ids

    @property
    def device_type(self) -> str:
        """Where this replica's engine runs: cpu, cuda, ..."""
        return self.client.device_type

    def health(self) -> dict:
        """Raises `EngineUnavailable` (HTTP 503, and a failed Serve health check) once the engine loop is
        dead; a draining replica ends on purpose and is not reported for replacement."""
        if not self.in_flight.draining:
            self.client.check_alive()
        return {"status": "ok", "base_model": self.settings.engine.base_model, **self.client.describe(),
                "tasks": len(self.view.entries)}

