"""promptmux's own endpoints: `POST /v1/generate` (plain or streamed), `POST /v1/classify`,
and `POST /v1/feedback` for the outputs of either (each output carries its feedback id)."""

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from promptmux.registry import TaskKind
from promptmux.serving.engine.sequence import StreamEvent
from promptmux.serving.http.api import (
    ClassifyBody,
    ClassifyOutput,
    ClassifyResponse,
    FeedbackBody,
    FeedbackResponse,
    GenerateBody,
    GenerateOutput,
    GenerateResponse,
)
from promptmux.serving.http.streaming import sse
from promptmux.serving.runtime.requests import Prepared
from promptmux.serving.runtime.service import PromptmuxService


def native_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateBody) -> GenerateResponse | StreamingResponse:
        items = await service.prepare(body.query(), TaskKind.generation, "generate", body.params)
        if not body.stream:
            outputs = await service.generate(items, "generate")
            return GenerateResponse(outputs=[
                GenerateOutput(id=service.feedback_id(item), index=i, task=item.task, version=item.version,
                               variant=item.variant, text=o.text, token_ids=o.token_ids,
                               finish_reason=o.finish_reason, usage=o.usage)
                for i, (item, o) in enumerate(zip(items, outputs))
            ])
        ids = [service.feedback_id(item) for item in items]
        streams = service.open_streams(items)  # overload and limits refused before the response starts

        async def events() -> AsyncIterator[dict]:
            async for index, event in service.merged_events(items, streams, "generate"):
                yield {"id": ids[index], **stream_event(items[index], index, event)}

        return sse(events())

    @router.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody) -> ClassifyResponse:
        items = await service.prepare(body.query(), TaskKind.classification, "classify")
        outputs = await service.classify(items, "classify")
        return ClassifyResponse(outputs=[
            ClassifyOutput(id=service.feedback_id(item, o.label), index=i, task=item.task, version=item.version,
                           variant=item.variant, label=o.label, probabilities=o.probabilities, usage=o.usage)
            for i, (item, o) in enumerate(zip(items, outputs))
        ])

    @router.post("/v1/feedback", response_model=FeedbackResponse)
    async def feedback(body: FeedbackBody) -> FeedbackResponse:
        return FeedbackResponse(counted=await service.feedback(body.id, body.score, body.label))

    return router


def stream_event(item: Prepared, index: int, event: StreamEvent) -> dict:
    payload = {"index": index, "task": item.task, "version": item.version, "variant": item.variant,
               "text": event.text, "token_ids": event.token_ids, "finish_reason": event.finish_reason}
    if event.output is not None:
        payload["usage"] = event.output.usage.model_dump()
    if event.error:
        payload["error"] = event.error
    return payload
