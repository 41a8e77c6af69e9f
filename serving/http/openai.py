"""The OpenAI-compatible surface: `POST /v1/completions` (plain or streamed), `GET /v1/models`,
and what `POST /v1/chat/completions` (`chat.py`) shares with them: the model name, the
response envelope, log-probabilities and the usage chunk of a stream.

`model` names the task (`task`, `task@3`, `task:staging`) and `user` is the routing key.
A classification task answers with its label as the completion text. Each choice's
feedback id is in `promptmux.ids`; with one choice it is also the response's `id`.
"""

import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from promptmux.registry import TaskKind
from promptmux.registry.names import parse_version
from promptmux.serving.engine.errors import RequestError
from promptmux.serving.engine.outputs import TokenLogprob, Usage
from promptmux.serving.engine.sequence import StreamEvent
from promptmux.serving.http.api import CompletionBody
from promptmux.serving.http.streaming import one_by_one, sse
from promptmux.serving.runtime.requests import Prepared, Query
from promptmux.serving.runtime.service import PromptmuxService

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def parse_model(model: str) -> tuple[str, int | None, str | None]:
    """OpenAI `model` → (task, version, alias): `task`, `task@3` or `task:staging`."""
    if "@" in model:
        task, _, version = model.partition("@")
        number = parse_version(version)
        if number is None:
            raise RequestError(f"invalid model {model!r}: expected task@VERSION with a positive integer (ASCII digits)")
        return task, number, None
    task, _, alias = model.partition(":")
    return task, None, alias or None


def total_usage(usages: list[Usage]) -> dict:
    return {key: sum(getattr(usage, key) for usage in usages) for key in USAGE_KEYS}


class Completion:
    """The envelope every response and chunk of one request shares: one id, one creation time,
    the object kind, and what served it (`promptmux`: task, version, variant, feedback ids)."""

    def __init__(self, model: str, served: Prepared, ids: list[str], kind: str = "text_completion") -> None:
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


def completion_logprobs(logprobs: list[TokenLogprob] | None, text_of: Callable[[int], str]) -> dict | None:
    """OpenAI's completions `logprobs`: tokens, their log-probabilities, the top alternatives, offsets."""
    if logprobs is None:
        return None
    tokens = [text_of(t.token_id) for t in logprobs]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in logprobs],
            "top_logprobs": [{text_of(a.token_id): a.logprob for a in t.top} for t in logprobs], "text_offset": offsets}


def chat_logprobs(logprobs: list[TokenLogprob] | None, text_of: Callable[[int], str]) -> dict | None:
    """OpenAI's chat `logprobs`: per token its text, log-probability, bytes and top alternatives."""
    if logprobs is None:
        return None

    def entry(token_id: int, logprob: float) -> dict:
        text = text_of(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(a.token_id, a.logprob) for a in t.top]}
                        for t in logprobs], "refusal": None}


def stream_response(service: PromptmuxService, items: list[Prepared], endpoint: str, completion: Completion,
                    choice_of: Callable[[int, StreamEvent], dict], usage: bool, first: list[dict] | None = None
                    ) -> StreamingResponse:
    """An OpenAI event stream: `first` choices (chat's role delta), a chunk per event, an error
    chunk for a row that fails, and with `usage` (`stream_options.include_usage`) a last chunk
    of no choices with the usage. Every input is submitted now, so overload and limits are
    refused before the response starts."""
    streams, usages = service.open_streams(items), []

    async def chunks() -> AsyncIterator[dict]:
        if first:
            yield completion.envelope(first, kind=completion.chunk_kind)
        async for index, event in service.merged_events(items, streams, endpoint):
            if event.error:
                yield {"error": {"message": event.error}}
                continue
            if event.output is not None:
                usages.append(event.output.usage)
            yield completion.envelope([choice_of(index, event)], kind=completion.chunk_kind)
        if usage:
            yield completion.envelope([], usages, kind=completion.chunk_kind)

    return sse(chunks())


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


def openai_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)  # JSON or an event stream
    async def completions(body: CompletionBody) -> dict | StreamingResponse:
        task, version, alias = parse_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        query = Query(task, prompts, version, alias, body.user)
        items = await service.prepare(query, None, "completions", body.params(logprobs=body.logprobs),
                                      tokens_field="max_tokens")
        if items[0].kind is TaskKind.classification:
            labels = await service.classify(items, "completions")
            completion = Completion(body.model, items[0], [service.feedback_id(i, o.label) for i, o in zip(items, labels)])
            choices = [choice(i, o.label, "stop") for i, o in enumerate(labels)]
            if body.stream:
                return sse(one_by_one([completion.envelope(choices)]))
            return completion.envelope(choices, [o.usage for o in labels])
        completion = Completion(body.model, items[0], [service.feedback_id(item) for item in items])
        if not body.stream:
            outputs = await service.generate(items, "completions")
            choices = [choice(i, o.text, o.finish_reason, completion_logprobs(o.logprobs, service.token_text))
                       for i, o in enumerate(outputs)]
            return completion.envelope(choices, [o.usage for o in outputs])

        def streamed(index: int, event: StreamEvent) -> dict:
            logprobs = completion_logprobs(event.logprobs, service.token_text) if body.logprobs is not None else None
            return choice(index, event.text, event.finish_reason, logprobs)

        return stream_response(service, items, "completions", completion, streamed, body.usage_in_stream)

    @router.get("/v1/models")
    async def models() -> dict:
        """The model ids a request may name and be served now: a task whose only version is
        archived, or an alias whose version cannot be served, is left out."""
        data, view = [], service.view
        for name in sorted(view.entries):
            entry = view.entries[name]
            created = int(entry.record.created_at.timestamp())
            aliases = sorted(entry.aliases.keys() | entry.fallbacks.keys())
            ids = [name] * view.servable(name) + [f"{name}:{alias}" for alias in aliases if view.servable(name, alias)]
            data += [{"id": model_id, "object": "model", "created": created, "owned_by": "promptmux"} for model_id in ids]
        return {"object": "list", "data": data}

    return router
