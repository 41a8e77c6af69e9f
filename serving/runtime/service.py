"""The serving runtime of one replica, independent of Ray: engine, routing, live registry
refresh, metrics. The FastAPI app (`serving/http/app.py`) exposes it; Ray Serve hosts it.
"""

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

import torch

from promptmux.registry import PromptVersion, Registry, TaskKind
from promptmux.registry.policy import Outcome, Result, ServedWindow, VariantServed
from promptmux.registry.schemas import Message, utc_now
from promptmux.serving.engine.async_engine import AsyncEngine, EventStream
from promptmux.serving.engine.errors import OverloadedError, PositionLimitError, RequestError
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput, Usage
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.sequence import StreamEvent
from promptmux.serving.runtime.deadline import Deadline
from promptmux.serving.runtime.errors import RequestTimeout
from promptmux.serving.runtime.feedback import FeedbackIds
from promptmux.serving.runtime.metrics import ServingMetrics
from promptmux.serving.runtime.requests import Assignment, Input, Prepared, Query, prepare
from promptmux.serving.runtime.routing import RegistryView
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.settings import ServeSettings

log = logging.getLogger(__name__)
R = TypeVar("R", GenerationOutput, ClassificationOutput)
DRAIN_POLL_S = 0.05
DRAIN_FLUSH_S = 5.0
CUT_AT_DEADLINE = "the server shut down before this request finished; retry"


class InFlight:
    """Requests between their first byte in and their last byte out (counted by the HTTP
    layer), and whether new ones are refused because the replica is draining."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False


class ServedCounters:
    """What this replica served per assignment (task, version, variant, experiment) since the
    last window was written, by result: the guard rails of automatic rollouts read these
    windows from the registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = utc_now()
        self._counts: dict[Assignment, VariantServed] = {}

    def add(self, assignment: Assignment, result: Result, latency_s: float = 0.0) -> None:
        with self._lock:
            served = self._counts.setdefault(assignment, VariantServed(
                version=assignment.version, variant=assignment.variant, experiment=assignment.experiment))
            served.add(result, latency_s)

    def take(self, replica: str, tasks: set[str]) -> dict[str, ServedWindow]:
        """This window's figures of `tasks` (the others are dropped); a new window starts."""
        with self._lock:
            counts, start, self._counts, self._start = self._counts, self._start, {}, utc_now()
        windows: dict[str, ServedWindow] = {}
        for assignment, served in counts.items():
            if assignment.task in tasks:
                window = windows.setdefault(assignment.task, ServedWindow(replica=replica, start=start, variants=[]))
                window.variants.append(served)
        return windows


def result_of(exc: BaseException) -> Result | None:
    """How a request that raised `exc` counts: a failure of the server (or of the version that
    served it), a timeout, a cancel; None for a refusal that says nothing of the version (an
    invalid request, a full queue), which is not counted against any variant."""
    if isinstance(exc, RequestTimeout):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, PositionLimitError):
        return "error" if exc.version_caused else None
    if isinstance(exc, RequestError | OverloadedError):
        return None
    return "error"


class PromptmuxService:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.engine = Engine(settings.engine, self.registry.versions)
        self.metrics = ServingMetrics(self.engine.prompts)
        self.view = RegistryView(self.registry, validate=self.engine.prompt, on_rejected=self._rejected,
                                 on_unreadable=self._unreadable, on_broken=self._broken,
                                 on_broken_variant=self._broken_variant,
                                 retry_rejected_s=settings.retry_rejected_s,
                                 full_scan_interval_s=settings.full_scan_interval_s)
        self.view.refresh()
        self.metrics.watch_rollouts(lambda: {name: e.rollout for name, e in self.view.entries.items() if e.rollout})
        self.async_engine = AsyncEngine(self.engine, on_step=self.metrics.batch_size.observe)
        self.in_flight = InFlight()
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.served = ServedCounters()
        key = settings.feedback_key.get_secret_value() if settings.feedback_key else None
        self.ids = FeedbackIds(bytes.fromhex(key) if key else self.registry.outcomes.feedback_key())
        self._stopped = threading.Event()
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
            except Exception:  # keep serving the last good view whatever the registry does
                log.exception("registry refresh failed; keeping the previous routes")

    def _publish_served(self) -> None:
        """Append this window's figures of every task under a rollout to the registry."""
        rolling = {name for name, entry in self.view.entries.items() if entry.rollout is not None}
        for task, window in self.served.take(self.replica, rolling).items():
            self.registry.outcomes.record_served(task, window)

    def shutdown(self) -> None:
        self._stopped.set()
        self.async_engine.shutdown()

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (the HTTP layer answers 503), let those in flight finish for up
        to `grace_s`, then end the rest: streams with an error event, the others with 503."""
        self.in_flight.draining = True
        log.warning("draining: %d requests in flight, %g s to finish", self.in_flight.count, grace_s)
        await self._until_idle(grace_s)
        if self.in_flight.count:
            log.warning("drain deadline: ending the %d requests still in flight", self.in_flight.count)
            self.async_engine.close(CUT_AT_DEADLINE)
            await self._until_idle(DRAIN_FLUSH_S)

    async def _until_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.in_flight.count and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)

    # ------------------------------------------------------------- requests
    async def prepare(
        self, query: Query, kind: TaskKind | None, endpoint: str, params: ParamsOverride | None = None,
        tokens_field: str = "max_new_tokens",
    ) -> list[Prepared]:
        """Route once per request and prepare every input; refuse the wrong kind of task
        (`kind=None` accepts both). A prompt not yet resident is loaded on a worker thread,
        off the event loop. `tokens_field` is what the client calls max_new_tokens. A request
        the routed version's virtual tokens push past the model's positions is counted as a
        failure of that version's variant before it is refused."""
        inputs = query.inputs
        if len(inputs) > self.settings.max_inputs_per_request:
            raise RequestError(f"{len(inputs)} inputs; the limit is {self.settings.max_inputs_per_request} per request")
        entry = self.view.task(query.task)
        spec = entry.record.spec
        if kind is not None and spec.kind is not kind:
            other = "/v1/classify" if spec.kind is TaskKind.classification else "/v1/generate"
            raise RequestError(f"task {query.task!r} is a {spec.kind.value} task: use {other}")
        route = self.view.route(query.task, query.version, query.alias, query.routing_key)
        prompts = self.engine.prompts
        prompt = prompts.resident(route.manifest) or await asyncio.to_thread(prompts.get, route.manifest)
        try:
            return prepare(self.engine, spec, route, prompt, inputs, params, tokens_field)
        except PositionLimitError as exc:
            self.count(endpoint, [Assignment.of(spec.name, route)] * len(inputs), result_of(exc))
            raise

    def chat_input(self, task: str, messages: list[Message]) -> Input:
        """A chat request's input: the conversation for a chat-format task; for a plain-template
        task, the content of its one user message (more is refused, saying so)."""
        spec = self.view.task(task).record.spec
        if spec.format == "chat":
            return messages
        if [m.role for m in messages] != ["user"]:
            roles = ", ".join(m.role for m in messages)
            raise RequestError(f"task {task!r} has a plain template: it takes exactly one user message as its input; "
                               f"this request has {len(messages)} message(s) ({roles})")
        return messages[0].content

    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (for log-probabilities)."""
        return self.engine.tokenizer.decode([token_id])

    def feedback_id(self, item: Prepared, label: str | None = None) -> str:
        """The signed id an output carries, which `POST /v1/feedback` takes back."""
        a = item.assignment
        return self.ids.issue(a.task, a.version, a.variant, a.experiment, label)

    def record(self, endpoint: str, item: Prepared, usage: Usage, started: float) -> None:
        a, latency = item.assignment, time.perf_counter() - started
        labels = (a.task, str(a.version), a.variant)
        self.count(endpoint, [a], "ok", latency)
        self.metrics.latency.labels(endpoint, *labels).observe(latency)
        self.metrics.tokens.labels(*labels, "prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(*labels, "completion").inc(usage.completion_tokens)

    def count(self, endpoint: str, assignments: list[Assignment], result: Result | None, latency_s: float = 0.0) -> None:
        """Count requests by result (ok, error, timeout: 504, cancelled: the client went away)
        under the variant that served each, for the metrics and for the rollouts' guard rails;
        a result of None (a refusal that says nothing of the version) is not counted."""
        if result is None:
            return
        for a in assignments:
            self.metrics.requests.labels(endpoint, a.task, str(a.version), a.variant, result).inc()
            self.served.add(a, result, latency_s)

    async def generate(self, items: list[Prepared], endpoint: str) -> list[GenerationOutput]:
        work = asyncio.gather(*(self.async_engine.generate(item.row) for item in items), return_exceptions=True)
        return await self._finish(work, endpoint, items)

    async def classify(self, items: list[Prepared], endpoint: str) -> list[ClassificationOutput]:
        return await self._finish(self.async_engine.classify([item.row for item in items]), endpoint, items)

    async def _finish(self, work: Awaitable[list[R | BaseException]], endpoint: str, items: list[Prepared]) -> list[R]:
        """Every output of a plain request within its deadline. Each input is counted with its
        own result under its own variant (a request of several inputs may fail in one of them);
        the first failure is then raised. A request that does not finish is counted as timed
        out (`RequestTimeout`, HTTP 504) or cancelled."""
        started = time.perf_counter()
        try:
            outputs = await Deadline(self.settings.request_timeout_s).wait(work)
        except (RequestTimeout, asyncio.CancelledError) as exc:
            self.count(endpoint, [item.assignment for item in items], result_of(exc))
            raise
        except Exception as exc:  # the whole job failed (a classification): every input with it
            outputs = [exc] * len(items)
        for item, output in zip(items, outputs):
            if isinstance(output, BaseException):
                self.count(endpoint, [item.assignment], result_of(output))
            else:
                self.record(endpoint, item, output.usage, started)
        failure = next((output for output in outputs if isinstance(output, BaseException)), None)
        if failure is not None:
            raise failure
        return list(outputs)

    def open_streams(self, items: list[Prepared]) -> list[EventStream]:
        """Submit every input now, so overload or limits are refused before a response starts."""
        streams: list[EventStream] = []
        try:
            for item in items:
                streams.append(self.async_engine.submit(item.row))
        except Exception:
            for stream in streams:
                stream.state.cancel()
            raise
        return streams

    async def merged_events(
        self, items: list[Prepared], streams: list[EventStream], endpoint: str
    ) -> AsyncIterator[tuple[int, StreamEvent]]:
        """(index, event) from every input's stream as they come; leaving early cancels them
        all, and so does the per-request deadline (after an error event)."""
        started = time.perf_counter()
        deadline = Deadline(self.settings.request_timeout_s)
        queue: asyncio.Queue[tuple[int, StreamEvent]] = asyncio.Queue()

        async def pump(index: int, stream: EventStream) -> None:
            async with aclosing(stream):
                async for event in stream:
                    await queue.put((index, event))

        pumps = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
        unfinished = set(range(len(streams)))
        try:
            while unfinished:
                try:
                    index, event = await deadline.wait(queue.get())
                except RequestTimeout as exc:
                    self.count(endpoint, [items[i].assignment for i in unfinished], "timeout")
                    yield 0, StreamEvent("", [], error=str(exc))
                    return
                if event.output is not None:
                    self.record(endpoint, items[index], event.output.usage, started)
                if event.error:
                    self.count(endpoint, [items[index].assignment], "error")
                if event.finish_reason or event.error:
                    unfinished.discard(index)
                yield index, event
        except (GeneratorExit, asyncio.CancelledError):  # the client went away
            self.count(endpoint, [items[i].assignment for i in unfinished], "cancelled")
            raise
        finally:
            for task in pumps:
                task.cancel()

    # ------------------------------------------------------------- feedback
    async def feedback(self, feedback_id: str, score: float | None, label: str | None) -> bool:
        """Count one piece of feedback on a served request, durably, before answering: True for
        the one create-only claim of its id, False when the same feedback was counted already
        (by any replica), `ConflictError` (409) when different feedback was."""
        served = self.ids.verify(feedback_id)
        spec = self.view.task(served.task).record.spec
        if served.label is None and label is not None:
            raise RequestError(f"{served.task} is a {spec.kind.value} task: send a score in [0, 1], not a label")
        if served.label is not None:
            if label is None:  # a score would skip the check against the label answered
                raise RequestError(f"{served.task} is a classification task: send the gold label ('label'), not a score")
            if label not in spec.labels:
                raise RequestError(f"unknown label {label!r} for {served.task} (labels: {', '.join(spec.labels)})")
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
    def task_summary(self, name: str, detail: bool = False) -> dict:
        entry = self.view.task(name)
        spec = entry.record.spec
        summary = {
            "task": name, "kind": spec.kind.value, "base_model": spec.base_model, "template": spec.template,
            "labels": spec.labels, "versions": sorted(entry.versions), "archived": sorted(entry.archived),
            "latest": entry.latest, "aliases": entry.aliases,
            "rollout": entry.rollout.model_dump(mode="json") if entry.rollout else None,
        }
        if detail:
            loaded = self.engine.prompts.stats().loaded
            summary["loaded"] = [key for key in loaded if key.split("@")[0] == name]
            summary["rejected"] = {f"{t}@{v}": problem for (t, v, _), problem in self.view.rejected.items() if t == name}
            summary["manifests"] = [m.model_dump(mode="json") for _, m in sorted(entry.versions.items())]
        return summary

    def health(self) -> dict:
        """Raises `EngineUnavailable` (HTTP 503, and a failed Serve health check) once the engine loop is
        dead; a draining replica ends on purpose and is not reported for replacement."""
        if not self.in_flight.draining:
            self.async_engine.check_alive()
        return {"status": "ok", "base_model": self.settings.engine.base_model, "device": str(self.engine.device),
                "dtype": str(self.engine.model.dtype).removeprefix("torch."), "pinned_kv": self.engine.pinned_kv,
                "torch_threads": self.engine.threads.threads if self.engine.threads else torch.get_num_threads(),
                "tasks": len(self.view.entries)}

