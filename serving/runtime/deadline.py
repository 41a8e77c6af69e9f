"""The one per-request deadline, for plain requests and streams alike."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from promptmux.core.errors import RequestTimeout

T = TypeVar("T")


class Deadline:
    """`timeout_s` from now. A plain request awaits its whole result within it; a stream
    awaits each next event within it, and so ends at the same moment a plain request would."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = asyncio.get_running_loop().time() + timeout_s

    async def wait(self, work: Awaitable[T]) -> T:
        """`work`'s result, or `RequestTimeout` (HTTP 504) once the deadline passes."""
        try:
            async with asyncio.timeout_at(self.at):
                return await work
        except TimeoutError as exc:
            raise RequestTimeout(f"the request took longer than {self.timeout_s:g} s") from exc
