"""The OpenAI-compatible surface: `POST /v1/completions` (plain or streamed), `GET /v1/models`,
and what `POST /v1/chat/completions` (`chat.py`) shares with them: the response envelope,
log-probabilities, and `respond`, which maps the runtime's answers to either endpoint's
response through its `Shape`.

`model` names the task (`task`, `task@3`, `task:staging`) and `user` is the routing key.
A classification task answers with its label as the completion text. Each choice's
feedback id is in `promptmux.ids`; with one choice it is also the response's `id`.
"""

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from promptmux.core.errors import NotFoundError
from promptmux.core.usage import Usage
from promptmux.registry import TaskKind
from promptmux.serving.http.api import CompletionBody
from promptmux.serving.http.guard import caller_of
from promptmux.serving.http.streaming import one_by_one, sse
from promptmux.serving.runtime.requests import Call
from promptmux.serving.runtime.results import Answer, AnswerStream, Delta, ServedBy, TokenChoice
from promptmux.serving.runtime.service import PromptmuxService

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def total_usage(usages: list[Usage]) -> dict:
    return {key: sum(getattr(usage, key) for usage in usages) for key in USAGE_KEYS}


class Completion:
    """The envelope every response and chunk of one request shares: one id, one creation time,
    the object kind, and what served it (`promptmux`: task, version, variant, feedback ids)."""

    def __init__(self, model: str, served: ServedBy, ids: list[str], kind: str = "text_completion") -> None:
        self.created, self.model, self.served, self.ids, self.kind = int(time.time()), model, served, ids, kind
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        self.id = ids[0] if len(ids) == 1 else f"{prefix}-{uuid.uuid4().hex}"

    @property
    def chunk_kind(self) -> str:
        """What a streamed piece is: `chat.completion.chunk`, or for completions the same kind."""
        return f"{self.kind}.chunk" if self.kind == "chat.completion" else self.kind

    def envelope(self, choices: list[dict], usages: list[Usage] | None = None, kind: str | None = None,
                 **extra: object) -> dict:
        body = {"id": self.id, "object": kind or self.kind, "created": self.created, "model": self.model,
                "choices": choices,
                "promptmux": {"task": self.served.task, "version": self.served.version, "variant": self.served.variant,
                              "ids": self.ids, **extra}}
        if usages is not None:
            body["usage"] = total_usage(usages)
        return body


def completion_logprobs(logprobs: list[TokenChoice] | None) -> dict | None:
    """OpenAI's completions `logprobs`: tokens, their log-probabilities, the top alternatives, offsets."""
    if logprobs is None:
        return None
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return {"tokens": [t.token for t in logprobs], "token_logprobs": [t.logprob for t in logprobs],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in logprobs], "text_offset": offsets}


@dataclass(frozen=True)
class Shape:
    """How one OpenAI endpoint writes its answers: the object kind, a whole answer's choice, a
    classification's choice (`streamed`: as a stream's one chunk), a streamed delta's choice,
    the choices a stream opens with, and whether a classification shows its probabilities."""

    kind: str
    answer: Callable[[Answer], dict]
    label: Callable[[Answer, bool], dict]
    delta: Callable[[Delta], dict]
    opening: Callable[[int], list[dict]] = lambda n: []
    probabilities: bool = False


async def respond(service: PromptmuxService, call: Call, model: str, shape: Shape, usage_in_stream: bool,
                  response: Response) -> dict | StreamingResponse:
    """One runtime call, and its answers as `shape` writes them: a JSON body, or an event
    stream: the opening choices, a chunk per delta, an error chunk for an input that fails,
    and with `usage_in_stream` (`stream_options.include_usage`) a last chunk of no choices
    with the usage. A classification streams as one chunk. The caller's rate-limit headers go
    on `response` (or on the stream)."""
    result = await service.serve(call)
    response.headers.update(result.rate_limits)
    completion = Completion(model, result.served, result.ids, shape.kind)
    if not isinstance(result, AnswerStream):
        answers, usages = result.answers, [a.usage for a in result.answers]
        if result.served.kind is not TaskKind.classification:
            return completion.envelope([shape.answer(a) for a in answers], usages)
        extra = {"probabilities": [a.probabilities for a in answers]} if shape.probabilities else {}
        if call.stream:
            chunk = completion.envelope([shape.label(a, True) for a in answers], kind=completion.chunk_kind, **extra)
            return sse(one_by_one([chunk]), result.rate_limits)
        return completion.envelope([shape.label(a, False) for a in answers], usages, **extra)

    async def chunks(stream: AnswerStream) -> AsyncIterator[dict]:
        usages = []
        opening = shape.opening(len(stream.ids))
        if opening:
            yield completion.envelope(opening, kind=completion.chunk_kind)
        async for delta in stream.deltas:
            if delta.error:
                yield {"error": {"message": delta.error}}
                continue
            if delta.usage is not None:
                usages.append(delta.usage)
            yield completion.envelope([shape.delta(delta)], kind=completion.chunk_kind)
        if usage_in_stream:
            yield completion.envelope([], usages, kind=completion.chunk_kind)

    return sse(chunks(result), result.rate_limits)


def model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "promptmux"}


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


COMPLETION = Shape(
    "text_completion",
    answer=lambda a: choice(a.index, a.text, a.finish_reason, completion_logprobs(a.logprobs)),
    label=lambda a, streamed: choice(a.index, a.text, "stop"),
    delta=lambda d: choice(d.index, d.text, d.finish_reason, completion_logprobs(d.logprobs)),
)


def openai_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)  # JSON or an event stream
    async def completions(body: CompletionBody, request: Request, response: Response) -> dict | StreamingResponse:
        answered = await respond(service, body.call(caller_of(request)), body.model, COMPLETION, body.usage_in_stream,
                                 response)
        if body.echo:  # never a stream (refused with echo)
            for choice in answered["choices"]:
                choice["text"] = body.prompts[choice["index"] // body.n] + choice["text"]
        return answered

    @router.get("/v1/models")
    async def models(request: Request) -> dict:
        """The model ids the caller may name and be served by now."""
        return {"object": "list", "data": [model_object(model_id, created) for model_id, created in service.model_ids(caller_of(request))]}

    @router.get("/v1/models/{model_id}")
    async def retrieve(model_id: str, request: Request) -> dict:
        """One model id the caller may name and be served by now (404 otherwise, as for a task it cannot see)."""
        created = dict(service.model_ids(caller_of(request))).get(model_id)
        if created is None:
            raise NotFoundError(f"the model {model_id!r} does not exist or is not served now")
        return model_object(model_id, created)

    return router
