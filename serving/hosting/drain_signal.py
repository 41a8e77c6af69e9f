"""The drain signal of `promptmux serve`: one small Ray actor the command sets on SIGTERM.

Every replica waits on it, drains its service and reports back; the command shuts Serve
down once all have. It lives apart from the replica's module so that its actor process
imports Ray only, not torch and the engine.
"""

import asyncio

import ray

DRAIN_NAMESPACE = "promptmux"


@ray.remote(num_cpus=0)
class DrainSignal:
    """Set once, by `promptmux serve` on SIGTERM; replicas wait on it and report when drained."""

    def __init__(self) -> None:
        self._started = asyncio.Event()
        self._grace_s = 0.0
        self._drained: set[str] = set()

    async def wait(self) -> float:
        """Returns the grace period once draining starts."""
        await self._started.wait()
        return self._grace_s

    async def start(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._started.set()

    async def drained(self, replica: str) -> None:
        self._drained.add(replica)

    async def drained_count(self) -> int:
        return len(self._drained)
