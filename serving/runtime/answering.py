"""Running a request, from the runtime's one call (`Answering.serve`) to its answers.

A request is routed once, every input is prepared (everything that can fail does, before
any joins a batch), run on the engine within the per-request deadline, and counted input by
input under the variant that served it (ok, error, timeout, cancelled) for the metrics and
the rollouts' guard rails. The answers carry their signed feedback ids and the runtime's own
result types (`results.py`).
"""

import asyncio
import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import TypeVar

from promptmux.core.clock import utc_now
from promptmux.core.errors import InvalidRequestError, OverloadedError, PositionLimitError, RateLimited, RequestTimeout
from promptmux.core.usage import Usage
from promptmux.registry import TaskKind
from promptmux.registry.policy import Result, ServedWindow, VariantServed
from promptmux.serving.engine.client import EngineClient, EngineRequest, EventStream, StreamEvent
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput, TokenLogprob
from promptmux.serving.runtime.deadline import Deadline
from promptmux.serving.runtime.feedback import FeedbackIds
from promptmux.serving.runtime.metrics import ServingMetrics
from promptmux.serving.runtime.requests import Assignment, Call
from promptmux.serving.runtime.results import Answer, Answers, AnswerStream, Delta, ServedBy, TokenAlternative, TokenChoice
from promptmux.serving.runtime.routing import RegistryView
from promptmux.serving.runtime.schemas import ParamsOverride
from promptmux.serving.runtime.settings import ServeSettings
from promptmux.serving.runtime.tenants import Caller, Quotas, Reservation
from promptmux.serving.runtime.traffic import TrafficCounters

R = TypeVar("R", GenerationOutput, ClassificationOutput)


class Ending:
    """How one request ended, told once: its quota released and its tenant's figures counted.

    A stream tells it from its own `finally`; a stream never iterated (its client left before
    the first byte, so its generator never ran) is told when the stream is collected."""

    def __init__(self, tell: Callable[[str, list[int], Iterable[float]], None]) -> None:
        self._tell = tell
        self.told = False

    def __call__(self, status: str, generated: list[int], waits: Iterable[float] = ()) -> None:
        if not self.told:
            self.told = True
            self._tell(status, generated, waits)


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
    if isinstance(exc, InvalidRequestError | OverloadedError):
        return None
    return "error"


class Answering:
    def __init__(self, settings: ServeSettings, client: EngineClient, view: RegistryView, ids: FeedbackIds,
                 metrics: ServingMetrics) -> None:
        self.settings, self.client, self.view = settings, client, view
        self.ids, self.metrics = ids, metrics
        self.served = ServedCounters()
        self.traffic = TrafficCounters()
        self.quotas = Quotas(settings.replicas, settings.quota_window_s)

    async def serve(self, call: Call) -> Answers | AnswerStream:
        """The one runtime call of a request: its answers, or for a streamed generation its
        stream (a classification has nothing to stream: its answers come whole). A tenant's
        request is counted against its quotas from here until its last answer."""
        tenant, name, reservation = call.caller.tenant, call.caller.name, None
        if tenant is not None:
            try:
                reservation = self.quotas.admit(tenant, len(call.query.inputs), self._can_generate(call))
            except RateLimited as exc:
                self.metrics.tenant_rate_limited.labels(name, exc.limit).inc()
                self.traffic.limited(name)
                raise
        ended = Ending(functools.partial(self._ended, call.caller, reservation))
        try:
            result = await self._answer(call, ended)
        except BaseException:
            ended("error", [])
            raise
        return dataclasses.replace(result, rate_limits=reservation.headers) if reservation else result

    def _can_generate(self, call: Call) -> int:
        """The most tokens a request can generate: its rows (`n` x inputs) x its max new tokens."""
        spec = self.view.task(call.query.task, call.caller).record.spec
        if spec.kind is TaskKind.classification:
            return 0
        return len(call.query.inputs) * (call.params or ParamsOverride()).apply(spec.generation).max_new_tokens

    def _ended(self, caller: Caller, reservation: Reservation | None, status: str, generated: list[int],
               waits: Iterable[float]) -> None:
        """A request of `caller` ended: its quota released, its tenant's figures counted."""
        if reservation is not None:
            self.quotas.release(reservation, sum(generated))
        self.metrics.tenant_requests.labels(caller.name, status).inc()
        self.metrics.tenant_tokens.labels(caller.name).inc(sum(generated))
        self.traffic.tenant(caller.name, status, sum(generated))
        for wait in waits:
            self.metrics.tenant_queue_wait.labels(caller.name).observe(wait)

    async def _answer(self, call: Call, ended: Ending) -> Answers | AnswerStream:
        """The request routed, then one call down to the engine client, whose answers or streams come back."""
        request, a = self.route(call)
        served, n = ServedBy(a.task, a.version, a.variant, request.spec.kind), len(request.inputs)
        if request.spec.kind is TaskKind.classification:
            labels = await self._finish(self.client.classify(request), call.endpoint, a, n)
            ended("ok", [o.usage.completion_tokens for o in labels])
            return Answers(served, [Answer(i, self.feedback_id(a, call.caller, o.label), o.label, [], "stop",
                                           o.usage, label=o.label, probabilities=o.probabilities)
                                    for i, o in enumerate(labels)])
        ids = [self.feedback_id(a, call.caller) for _ in range(n)]
        if call.stream:
            try:
                streams = await self.client.stream(request)
            except Exception as exc:
                self.count(call.endpoint, [a] * n, result_of(exc))
                raise
            deltas = self._deltas(a, request.params.logprobs is not None, streams, call.endpoint, ended)
            weakref.finalize(deltas, self._abandoned, a, streams, call.endpoint, ended)
            return AnswerStream(served, ids, deltas)
        outputs = await self._finish(self.client.generate(request), call.endpoint, a, n)
        ended("ok", [o.usage.completion_tokens for o in outputs], [o.queue_s for o in outputs])
        return Answers(served, [Answer(i, ids[i], o.text, o.token_ids, o.finish_reason, o.usage,
                                       logprobs=self._choices(o.logprobs)) for i, o in enumerate(outputs)])

    def _abandoned(self, assignment: Assignment, streams: list[EventStream], endpoint: str, ended: Ending) -> None:
        """A stream collected without ever being iterated: its rows are cancelled, and it ends
        as cancelled (a stream that ran has told its end already, and this does nothing)."""
        if ended.told:
            return
        for stream in streams:
            stream.cancel()
        self.count(endpoint, [assignment] * len(streams), "cancelled")
        ended("cancelled", [])

    def route(self, call: Call) -> tuple[EngineRequest, Assignment]:
        """Route once per request, refusing the wrong kind of task, and resolve its parameters
        against the task's defaults: the request the engine client takes, and who serves it."""
        query = call.query
        if len(query.inputs) > self.settings.max_inputs_per_request:
            raise InvalidRequestError(f"{len(query.inputs)} inputs; the limit is {self.settings.max_inputs_per_request} "
                                      "per request")
        spec = self.view.task(query.task, call.caller).record.spec
        if call.kind is not None and spec.kind is not call.kind:
            other = "/v1/classify" if spec.kind is TaskKind.classification else "/v1/generate"
            raise InvalidRequestError(f"task {query.task!r} is a {spec.kind.value} task: use {other}")
        generation = spec.kind is TaskKind.generation
        if not generation and call.params is not None and call.params.logprobs is not None:
            raise InvalidRequestError(f"task {query.task!r} is a classification task: it answers a label with each "
                                      "label's probability (`probabilities` on /v1/classify), not token log-probabilities")
        route = self.view.route(query.task, query.version, query.alias, query.routing_key)
        params = (call.params or ParamsOverride()).apply(spec.generation) if generation else None
        request = EngineRequest(spec, route.manifest, query.inputs, params, call.tokens_field, call.conversation,
                                call.choices, call.caller.name, call.caller.weight)
        return request, Assignment.of(spec.name, route)

    def feedback_id(self, a: Assignment, caller: Caller, label: str | None = None) -> str:
        """The signed id an output carries, which `POST /v1/feedback` takes back (from this caller only)."""
        return self.ids.issue(a.task, a.version, a.variant, a.experiment, label, caller.tenant and caller.name)

    def _choices(self, logprobs: list[TokenLogprob] | None) -> list[TokenChoice] | None:
        """Log-probabilities with each token's text (special tokens included)."""
        if logprobs is None:
            return None
        text = self.client.token_text
        return [TokenChoice(text(t.token_id), t.logprob, [TokenAlternative(text(a.token_id), a.logprob) for a in t.top])
                for t in logprobs]

    def record(self, endpoint: str, a: Assignment, usage: Usage, started: float) -> None:
        latency = time.perf_counter() - started
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
            self.traffic.task(a.task, result)

    async def _finish(self, work: Awaitable[list[R | BaseException]], endpoint: str, a: Assignment, n: int) -> list[R]:
        """Every output of a plain request of `n` inputs within its deadline. Each input is
        counted with its own result (a request of several inputs may fail in one of them); the
        first failure is then raised. A request refused or failed as a whole counts each input
        with its refusal or failure (a version's virtual tokens past the positions: an error of
        its variant); one that does not finish is counted as timed out (`RequestTimeout`, HTTP
        504) or cancelled."""
        started = time.perf_counter()
        try:
            outputs = await Deadline(self.settings.request_timeout_s).wait(work)
        except (RequestTimeout, asyncio.CancelledError) as exc:
            self.count(endpoint, [a] * n, result_of(exc))
            raise
        except Exception as exc:  # the whole request was refused or failed: every input with it
            outputs = [exc] * n
        for output in outputs:
            if isinstance(output, BaseException):
                self.count(endpoint, [a], result_of(output))
            else:
                self.record(endpoint, a, output.usage, started)
        failure = next((output for output in outputs if isinstance(output, BaseException)), None)
        if failure is not None:
            raise failure
        return list(outputs)

    async def _deltas(self, a: Assignment, asked: bool, streams: list[EventStream], endpoint: str,
                      ended: Ending) -> AsyncIterator[Delta]:
        """Every input's deltas as they come; leaving early cancels them all, and so does the
        per-request deadline (after an error delta). `ended` is told how it ended."""
        started = time.perf_counter()
        status, generated, waits = "error", [], []
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
                    self.count(endpoint, [a] * len(unfinished), "timeout")
                    status = "timeout"
                    yield Delta(0, "", [], error=str(exc))
                    return
                if event.output is not None:
                    self.record(endpoint, a, event.output.usage, started)
                    generated.append(event.output.usage.completion_tokens)
                    waits.append(event.output.queue_s)
                if event.error:
                    self.count(endpoint, [a], "error")
                if event.finish_reason or event.error:
                    unfinished.discard(index)
                yield Delta(index, event.text, event.token_ids, event.finish_reason,
                            event.output.usage if event.output is not None else None,
                            self._choices(event.logprobs) if asked else None, event.error)
            status = "ok" if len(generated) == len(streams) else "error"
        except (GeneratorExit, asyncio.CancelledError):  # the client went away
            self.count(endpoint, [a] * len(unfinished), "cancelled")
            status = "cancelled"
            raise
        finally:
            for task in pumps:
                task.cancel()
            ended(status, generated, waits)
