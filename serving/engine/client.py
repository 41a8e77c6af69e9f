"""The engine as the runtime sees it: one object that takes a request and gives answers or a
stream back (vLLM v1's `EngineClient` over its engine core is the model). It holds the
engine, its input processor and the asyncio loop that drives it; the runtime touches nothing
else of the engine (tests/test_layers.py holds that), so a request goes down once and comes
back once: one call of the runtime per request (`classify`, `generate` or `stream`) goes
client -> input processor -> scheduler -> model, and its answers or streams come back.

What the runtime reads of the engine's types is named here too: the request, the streams and
their events, and the prompt cache's figures (the outputs are in `outputs.py`).
"""

import asyncio
from collections.abc import Callable

import torch

from promptmux.core.errors import PromptmuxError
from promptmux.registry import PromptVersion
from promptmux.serving.engine.async_engine import AsyncEngine, EventStream
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.input_processor import EngineRequest
from promptmux.serving.engine.offline import Output, run
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput
from promptmux.serving.engine.prompt_cache import CachedPrompt, CacheStats, PromptLoader
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.sequence import StreamEvent

Rows = list[GenerationRow] | list[ClassificationRow]
__all__ = ["CacheStats", "EngineClient", "EngineRequest", "EventStream", "Output", "StreamEvent"]


class EngineClient:
    def __init__(self, config: EngineConfig, loader: PromptLoader, on_step: Callable[[int], None] | None = None,
                 serving: bool = True) -> None:
        """An engine over `config`'s base model with prompts from `loader`; `serving` starts the
        loop that serves requests as they come (off: `run` only, as `promptmux generate` does)."""
        self.engine = Engine(config, loader)
        self.core = AsyncEngine(self.engine, on_step=on_step) if serving else None

    def load(self, manifest: PromptVersion) -> CachedPrompt:
        """Load and check a version's prompt into the cache (no model forward): what makes a
        version servable."""
        return self.engine.prompt(manifest)

    async def _rows(self, request: EngineRequest) -> Rows:
        """The request's rows, every check made; a prompt not yet resident is loaded on a worker
        thread, off the event loop."""
        prompts = self.engine.prompts
        prompt = prompts.resident(request.manifest) or await asyncio.to_thread(prompts.get, request.manifest)
        return self.engine.inputs.rows(request, prompt)

    async def classify(self, request: EngineRequest) -> list[ClassificationOutput]:
        """Every input's label, scored on the loop thread with every other pending classification."""
        return await self._serving().classify(await self._rows(request))

    async def generate(self, request: EngineRequest) -> list[GenerationOutput | BaseException]:
        """Every input's whole generation, or the exception its row failed with (a request of
        several inputs may fail in one of them); a request refused as a whole raises."""
        core, rows = self._serving(), await self._rows(request)
        return await asyncio.gather(*(core.generate(row) for row in rows), return_exceptions=True)

    async def stream(self, request: EngineRequest) -> list[EventStream]:
        """Every input's events as they come. Every row is submitted now, so overload or limits
        are refused before a response starts (and the rows submitted so far are cancelled)."""
        core, rows = self._serving(), await self._rows(request)
        streams: list[EventStream] = []
        try:
            for row in rows:
                streams.append(core.submit(row))
        except Exception:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    def run(self, requests: list[EngineRequest]) -> list[Output | Exception]:
        """Every request's one input run to completion without a server, in order; a request
        refused (its prompt, its checks) or failed gives its exception in its place."""
        rows: list[GenerationRow | ClassificationRow | Exception] = []
        for request in requests:
            try:
                rows.append(self.engine.inputs.rows(request, self.load(request.manifest))[0])
            except PromptmuxError as exc:  # the request's own fault: its answer, not the others'
                rows.append(exc)
        ran = iter(run(self.engine, [row for row in rows if not isinstance(row, Exception)]))
        return [row if isinstance(row, Exception) else next(ran) for row in rows]

    def token_text(self, token_id: int) -> str:
        return self.engine.inputs.token_text(token_id)

    def cache_stats(self) -> CacheStats:
        return self.engine.prompts.stats()

    def describe(self) -> dict[str, object]:
        """What the health check reports of the engine."""
        engine = self.engine
        return {"device": str(engine.device), "dtype": str(engine.model.dtype).removeprefix("torch."),
                "pinned_kv": engine.pinned_kv,
                "torch_threads": engine.threads.threads if engine.threads else torch.get_num_threads()}

    @property
    def device_type(self) -> str:
        return self.engine.device.type

    def check_alive(self) -> None:
        self._serving().check_alive()

    def close(self, reason: str) -> None:
        self._serving().close(reason)

    def shutdown(self) -> None:
        if self.core is not None:
            self.core.shutdown()

    def _serving(self) -> AsyncEngine:
        if self.core is None:
            raise RuntimeError("this engine client runs offline (serving=False)")
        return self.core
