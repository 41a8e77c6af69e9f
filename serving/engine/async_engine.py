"""The engine as an asyncio service: a scheduler loop on its own thread, requests as streams.

The model is driven only from the loop thread; each request's events are handed to the
caller's event loop with `call_soon_threadsafe`. Leaving a stream early (a client that
went away, a cancelled task) cancels the request: its row leaves the batch at the next
step and its memory is released.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import aclosing

from promptmux.core.errors import EngineUnavailable, PromptmuxError
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import ClassificationJob, Scheduler
from promptmux.serving.engine.sequence import Sequence, StreamEvent

IDLE_WAIT_S = 0.5
DEAD = "the engine loop has stopped; this replica is being replaced, retry"
log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """The engine failed while running a request (not the request's fault)."""


class EventStream:
    """One request's events. Leaving early (`aclose`, e.g. a client that went away)
    cancels the request; its row leaves the batch at the next step."""

    def __init__(self, state: Sequence, queue: "asyncio.Queue[StreamEvent]") -> None:
        self.state = state
        self._queue = queue
        self._ended = False

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> StreamEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._ended = bool(event.finish_reason or event.error)
        return event

    async def aclose(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Cancel the request: its row leaves the batch at the next step."""
        if not self.state.done:
            self.state.cancel()


class AsyncEngine:
    def __init__(
        self,
        engine: "Engine",
        static: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.scheduler = Scheduler(engine.config, engine, static=static, on_step=on_step)
        self._wake = threading.Event()
        self._stopped = False
        self._dead = False
        self._closed: str | None = None
        self._thread = threading.Thread(target=self._loop, name="promptmux-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stopped:
                if self._closed is not None and self.scheduler.has_work():
                    self.scheduler.fail_everything(EngineUnavailable(self._closed))
                    continue
                if not self.scheduler.has_work():
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                try:
                    self.scheduler.step()
                except Exception as exc:  # a bug in a step fails the rows in flight, never the loop
                    log.exception("engine step failed; failing the %d running rows", len(self.scheduler.running))
                    self.scheduler.fail_running(exc)
        finally:
            if not self._stopped:  # the thread is dying: nothing queued may wait for it
                self._dead = True
                log.critical("the engine loop died; failing every request and reporting unhealthy")
                self.scheduler.fail_everything(EngineUnavailable(DEAD))

    def check_alive(self) -> None:
        """Raise once the engine is closed, or once the loop thread has died: the replica can
        serve nothing and must be replaced."""
        if self._closed is not None:
            raise EngineUnavailable(self._closed)
        if self._dead or (not self._thread.is_alive() and not self._stopped):
            raise EngineUnavailable(DEAD)

    def close(self, reason: str) -> None:
        """End every request the engine holds, now and from now on, with `EngineUnavailable(reason)`.
        Done on the loop thread, between two steps."""
        self._closed = reason
        self._wake.set()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    def submit(self, row: GenerationRow, stream: bool = True) -> "EventStream":
        """Queue a request now (raising InvalidRequestError or OverloadedError at once) and return
        its events (every delta, or with `stream=False` only the last) as an async
        iterator. Call from a running event loop."""
        self.check_alive()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        state = self.scheduler.submit(row, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), stream)
        self._wake.set()
        return EventStream(state, queue)

    async def generate(self, row: GenerationRow) -> GenerationOutput:
        async with aclosing(self.submit(row, stream=False)) as events:
            async for event in events:
                if event.error:
                    self.check_alive()
                    if isinstance(events.state.failure, PromptmuxError):  # the request's own fault, e.g. its positions
                        raise events.state.failure
                    raise EngineFailure(event.error)
                if event.output is not None:
                    return event.output
        raise EngineFailure("the request ended without a result")

    async def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]:
        """Classify on the loop thread, batched with every other pending classification."""
        self.check_alive()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: list[ClassificationOutput] | Exception) -> None:
            setter = future.set_exception if isinstance(result, Exception) else future.set_result
            loop.call_soon_threadsafe(lambda: future.done() or setter(result))

        self.scheduler.submit_classification(ClassificationJob(rows, done))
        self._wake.set()
        return await future
