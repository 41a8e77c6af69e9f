"""OpenAI's `POST /v1/chat/completions` (plain or streamed).

`model` is `task`, `task:alias` or `task@version`, `user` the routing key. A chat-format task
renders the whole conversation through the base model's chat template (its system message
when the conversation has none, the template framing the last user message); a
plain-template task takes exactly one user message as its input. `n` choices are `n` rows
(with a seed, choice i samples with seed + i). A classification task answers with its label
as the message content, its probabilities in `promptmux.probabilities`. The response `id`
is the signed feedback id (with several choices, `promptmux.ids` holds one per choice).
"""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from promptmux.registry import TaskKind
from promptmux.serving.engine.sequence import StreamEvent
from promptmux.serving.http.api import ChatBody
from promptmux.serving.http.openai import Completion, chat_logprobs, parse_model, stream_response
from promptmux.serving.http.streaming import one_by_one, sse
from promptmux.serving.runtime.requests import Prepared, Query
from promptmux.serving.runtime.service import PromptmuxService


def message_choice(index: int, content: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason,
            "logprobs": logprobs}


def delta_choice(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}


def reseeded(items: list[Prepared]) -> None:
    """Choice i of a seeded sampling request samples with seed + i: different, and repeatable."""
    for i, item in enumerate(items):
        params = item.row.params
        if params.seed is not None and params.temperature > 0:
            item.row.params = params.model_copy(update={"seed": (params.seed + i) % 2**64})


def chat_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)  # JSON or an event stream
    async def chat(body: ChatBody) -> dict | StreamingResponse:
        task, version, alias = parse_model(body.model)
        request = service.chat_input(task, [m.message() for m in body.messages])
        query = Query(task, [request] * body.n, version, alias, body.user)
        items = await service.prepare(query, None, "chat", body.chat_params(), tokens_field=body.tokens_field)
        if items[0].kind is TaskKind.classification:
            labels = await service.classify(items, "chat")
            completion = Completion(body.model, items[0], [service.feedback_id(i, o.label) for i, o in zip(items, labels)],
                                    "chat.completion")
            probabilities = [o.probabilities for o in labels]
            if body.stream:
                return sse(one_by_one([completion.envelope(
                    [delta_choice(i, {"role": "assistant", "content": o.label}, "stop") for i, o in enumerate(labels)],
                    kind=completion.chunk_kind, probabilities=probabilities)]))
            return completion.envelope([message_choice(i, o.label, "stop") for i, o in enumerate(labels)],
                                       [o.usage for o in labels], probabilities=probabilities)
        reseeded(items)
        completion = Completion(body.model, items[0], [service.feedback_id(item) for item in items], "chat.completion")
        if not body.stream:
            outputs = await service.generate(items, "chat")
            choices = [message_choice(i, o.text, o.finish_reason, chat_logprobs(o.logprobs, service.token_text))
                       for i, o in enumerate(outputs)]
            return completion.envelope(choices, [o.usage for o in outputs])

        def streamed(index: int, event: StreamEvent) -> dict:
            logprobs = chat_logprobs(event.logprobs, service.token_text) if body.logprobs else None
            delta = {"content": event.text} if event.text or not event.finish_reason else {}
            return delta_choice(index, delta, event.finish_reason, logprobs)

        first = [delta_choice(i, {"role": "assistant", "content": ""}) for i in range(len(items))]
        return stream_response(service, items, "chat", completion, streamed, body.usage_in_stream, first)

    return router
