"""promptmux's own endpoints: `POST /v1/generate` (plain or streamed), `POST /v1/classify`,
and `POST /v1/feedback` for the outputs of either (each output carries its feedback id).
Each maps its body to one runtime call and the runtime's answers to its response."""

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from promptmux.registry import TaskKind
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
from promptmux.serving.http.guard import caller_of
from promptmux.serving.http.streaming import sse
from promptmux.serving.runtime.requests import Call
from promptmux.serving.runtime.results import Answers, AnswerStream, Delta, ServedBy
from promptmux.serving.runtime.service import PromptmuxService


def native_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/generate", response_model=GenerateResponse)
    async def generate(body: GenerateBody, request: Request, response: Response) -> GenerateResponse | StreamingResponse:
        result = await service.serve(Call(body.query(), "generate", TaskKind.generation, body.params, stream=body.stream,
                                          caller=caller_of(request)))
        response.headers.update(result.rate_limits)
        if isinstance(result, AnswerStream):
            return sse(stream_events(result), result.rate_limits)
        served = result.served
        return GenerateResponse(outputs=[
            GenerateOutput(id=a.id, index=a.index, task=served.task, version=served.version, variant=served.variant,
                           text=a.text, token_ids=a.token_ids, finish_reason=a.finish_reason, usage=a.usage)
            for a in result.answers
        ])

    @router.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody, request: Request, response: Response) -> ClassifyResponse:
        result: Answers = await service.serve(Call(body.query(), "classify", TaskKind.classification,
                                                   caller=caller_of(request)))
        response.headers.update(result.rate_limits)
        served = result.served
        return ClassifyResponse(outputs=[
            ClassifyOutput(id=a.id, index=a.index, task=served.task, version=served.version, variant=served.variant,
                           label=a.label, probabilities=a.probabilities, usage=a.usage)
            for a in result.answers
        ])

    @router.post("/v1/feedback", response_model=FeedbackResponse)
    async def feedback(body: FeedbackBody, request: Request) -> FeedbackResponse:
        return FeedbackResponse(counted=await service.feedback(body.id, body.score, body.label, caller_of(request)))

    return router


async def stream_events(stream: AnswerStream) -> AsyncIterator[dict]:
    async for delta in stream.deltas:
        yield {"id": stream.ids[delta.index], **stream_event(stream.served, delta)}


def stream_event(served: ServedBy, delta: Delta) -> dict:
    payload = {"index": delta.index, "task": served.task, "version": served.version, "variant": served.variant,
               "text": delta.text, "token_ids": delta.token_ids, "finish_reason": delta.finish_reason}
    if delta.usage is not None:
        payload["usage"] = delta.usage.model_dump()
    if delta.error:
        payload["error"] = delta.error
    return payload
