"""This replica's traffic per task and per tenant since its last window, which the service
appends to the registry once a minute (`registry/traffic_store.py`): the console's "last
hour" is every replica's windows summed, read from the registry alone."""

import threading

from promptmux.core.clock import utc_now
from promptmux.registry.policy import Result
from promptmux.registry.traffic_store import TrafficCounts, TrafficWindow


class TrafficCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = TrafficWindow(replica="", start=utc_now())

    def task(self, task: str, result: Result) -> None:
        with self._lock:
            counts = self._window.tasks.setdefault(task, TrafficCounts())
            counts.requests += 1
            counts.errors += result in ("error", "timeout")

    def tenant(self, tenant: str, status: str, tokens: int) -> None:
        """A request of `tenant` ("" for the admin) ended with `status`, having generated `tokens`."""
        with self._lock:
            counts = self._window.tenants.setdefault(tenant, TrafficCounts())
            counts.requests += 1
            counts.errors += status in ("error", "timeout")
            counts.tokens += tokens

    def limited(self, tenant: str) -> None:
        with self._lock:
            self._window.tenants.setdefault(tenant, TrafficCounts()).limited += 1

    def take(self, replica: str) -> TrafficWindow | None:
        """The window so far (None when it saw nothing); a new one starts."""
        with self._lock:
            window, self._window = self._window, TrafficWindow(replica=replica, start=utc_now())
        if not window.tasks and not window.tenants:
            return None
        return window.model_copy(update={"replica": replica, "end": utc_now()})
