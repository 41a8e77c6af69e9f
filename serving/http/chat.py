"""OpenAI's `POST /v1/chat/completions` (plain or streamed).

`model` is `task`, `task:alias` or `task@version`, `user` the routing key. A chat-format task
renders the whole conversation through the base model's chat template (its system message
when the conversation has none, the template framing the last user message); a
plain-template task takes exactly one user message as its input. `n` choices are `n` rows
(with a seed, choice i samples with seed + i). A classification task answers with its label
as the message content, its probabilities in `promptmux.probabilities`. The response `id`
is the signed feedback id (with several choices, `promptmux.ids` holds one per choice).
"""

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from promptmux.serving.http.api import ChatBody
from promptmux.serving.http.guard import caller_of
from promptmux.serving.http.openai import Shape, respond
from promptmux.serving.runtime.results import Delta, TokenChoice
from promptmux.serving.runtime.service import PromptmuxService


def chat_logprobs(logprobs: list[TokenChoice] | None) -> dict | None:
    """OpenAI's chat `logprobs`: per token its text, log-probability, bytes and top alternatives."""
    if logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(a.token, a.logprob) for a in t.top]}
                        for t in logprobs], "refusal": None}


def message_choice(index: int, content: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason,
            "logprobs": logprobs}


def delta_choice(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}


def streamed(d: Delta) -> dict:
    return delta_choice(d.index, {"content": d.text} if d.text or not d.finish_reason else {}, d.finish_reason,
                        chat_logprobs(d.logprobs))


CHAT = Shape(
    "chat.completion",
    answer=lambda a: message_choice(a.index, a.text, a.finish_reason, chat_logprobs(a.logprobs)),
    label=lambda a, streamed: delta_choice(a.index, {"role": "assistant", "content": a.text}, "stop") if streamed
    else message_choice(a.index, a.text, "stop"),
    delta=streamed,
    opening=lambda n: [delta_choice(i, {"role": "assistant", "content": ""}) for i in range(n)],
    probabilities=True,
)


def chat_router(service: PromptmuxService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)  # JSON or an event stream
    async def chat(body: ChatBody, request: Request, response: Response) -> dict | StreamingResponse:
        return await respond(service, body.call(caller_of(request)), body.model, CHAT, body.usage_in_stream, response)

    return router
