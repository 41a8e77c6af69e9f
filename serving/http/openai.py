"""The OpenAI-compatible surface: `POST /v1/completions` (plain or streamed) and `GET /v1/models`.

`model` names the task (`task`, `task@3`, `task:staging`) and `user` is the routing key.
A classification task answers with its label as the completion text. Each choice's
feedback id is in `promptmux.ids`; with one prompt it is also the completion's `id`.
"""

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from promptmux.registry import TaskKind
from promptmux.registry.names import parse_version
from promptmux.serving.engine.errors import RequestError
from promptmux.serving.engine.outputs import Usage
from promptmux.serving.http.api import CompletionBody
from promptmux.serving.http.streaming import one_by_one, sse
from promptmux.serving.runtime.requests import Prepared, Query
from promptmux.serving.runtime.service import PromptmuxService


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


class Completion:
    """The envelope every completion response and chunk shares: one id, one creation time."""

    def __init__(self, model: str, served: Prepared, ids: list[str]) -> None:
        self.created, self.model, self.served, self.ids = int(time.time()), model, served, ids
        self.id = ids[0] if len(ids) == 1 else f"cmpl-{uuid.uuid4().hex}"

    def envelope(self, choices: list[dict], usages: list[Usage] | None = None) -> dict:
        body = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices,
                "promptmux": {"task": self.served.task, "version": self.served.version, "variant": self.served.variant,
                              "ids": self.ids}}
        if usages is not None:
            keys = ("prompt_tokens", "completion_tokens", "total_tokens")
            body["usage"] = {key: sum(getattr(usage, key) for usage in usages) for key in keys}
        return body


def choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


def openai_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)  # JSON or an event stream
    async def completions(body: CompletionBody) -> dict | StreamingResponse:
        task, version, alias = parse_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        query = Query(task, prompts, version, alias, body.user)
        items = await service.prepare(query, None, "completions", body.params(), tokens_field="max_tokens")
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
            choices = [choice(i, o.text, o.finish_reason) for i, o in enumerate(outputs)]
            return completion.envelope(choices, [o.usage for o in outputs])

        async def chunks() -> AsyncIterator[dict]:
            async for index, event in service.merged_events(items, service.open_streams(items), "completions"):
                if event.error:
                    yield {"error": {"message": event.error}}
                else:
                    yield completion.envelope([choice(index, event.text, event.finish_reason)])

        return sse(chunks())

    @router.get("/v1/models")
    async def models() -> dict:
        data = []
        for name in sorted(service.view.entries):
            entry = service.view.entries[name]
            created = int(entry.record.created_at.timestamp())
            ids = [name, *(f"{name}:{alias}" for alias in sorted(entry.aliases.keys() | entry.broken.keys()))]
            data += [{"id": model_id, "object": "model", "created": created, "owned_by": "promptmux"} for model_id in ids]
        return {"object": "list", "data": data}

    return router
