"""The engine as an asyncio service: a scheduler loop on its own thread, requests as streams.

The model is driven only from the loop thread; each request's events are handed to the
caller's event loop with `call_soon_threadsafe`. Leaving a stream early (a client that
went away, a cancelled task) cancels the request: its row leaves the batch at the next
step and its memory is released.
"""

import asyncio
import threading
from collections.abc import AsyncIterator

from serving.batching import ClassificationRow, GenerationRow
from serving.scheduler import ClassificationJob, RequestState, Scheduler, StreamEvent
from serving.schemas import ClassificationOutput, GenerationOutput

IDLE_WAIT_S = 0.5


class AsyncEngine:
    def __init__(self, engine, static: bool = False) -> None:  # noqa: ANN001 - serving.engine.Engine
        self.engine = engine
        self.scheduler = Scheduler(engine.config, engine, static=static)
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="promptmux-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            if not self.scheduler.has_work():
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            self.scheduler.step()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    async def stream(self, row: GenerationRow) -> AsyncIterator[StreamEvent]:
        """Events of one request as they are produced; raises RequestError/OverloadedError on submit."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        state: RequestState = self.scheduler.submit(row, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
        self._wake.set()
        try:
            while True:
                event = await queue.get()
                yield event
                if event.finish_reason or event.error:
                    return
        finally:
            if not state.done:
                state.cancel()

    async def generate(self, row: GenerationRow) -> GenerationOutput:
        async for event in self.stream(row):
            if event.error:
                raise RuntimeError(event.error)
            if event.output is not None:
                return event.output
        raise RuntimeError("the request ended without a result")

    async def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]:
        """Classify on the loop thread, batched with every other pending classification."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: list[ClassificationOutput] | Exception) -> None:
            setter = future.set_exception if isinstance(result, Exception) else future.set_result
            loop.call_soon_threadsafe(lambda: future.done() or setter(result))

        self.scheduler.submit_classification(ClassificationJob(rows, done))
        self._wake.set()
        return await future
