"""Server-sent events: one `data:` line per event, then `[DONE]`, as OpenAI streams end."""

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse


def sse(events: AsyncIterator[dict], headers: dict[str, str] | None = None) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


async def one_by_one(events: list[dict]) -> AsyncIterator[dict]:
    for event in events:
        yield event
