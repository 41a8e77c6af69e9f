"""Who is calling, what they may see, and how much they may ask of this replica.

A request's bearer key names its caller: the admin key (`ServeSettings.api_token`) sees
everything; a tenant's key (`registry.tenants`) sees the tasks its patterns match, and
any other task answers exactly as a task that does not exist. With no admin key and a
registry that never had a tenant the endpoint is open; otherwise a request without a
valid key gets 401 (a revoked tenant's key included).

Quotas are per tenant: a request rate, generated tokens per minute, and requests in
flight. With N replicas each replica holds 1/N of each limit, rounded up for the
concurrency cap (`Share`): with requests spread evenly, as Ray Serve's router
spreads them, the endpoint admits the limit. The error bound: a tenant gets at most the
limit plus N-1 concurrent requests (the rounding), its rate and token limits are never
exceeded endpoint-wide, and a tenant whose requests all land on one replica is refused
from 1/N of its limit on; a token budget is charged when the tokens are generated, so a
request admitted under the budget may overrun it by its own max_new_tokens.
"""

import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from promptmux.registry.tenant_store import TenantRecord
from promptmux.serving.runtime.errors import RateLimited

WINDOW_S = 60.0


@dataclass(frozen=True)
class Caller:
    """The caller of a request: a tenant, or None for the admin key or an open endpoint."""

    tenant: TenantRecord | None = None

    @property
    def name(self) -> str:
        """The owner its requests are queued under ("" for the admin)."""
        return self.tenant.name if self.tenant else ""

    @property
    def weight(self) -> float:
        return self.tenant.weight if self.tenant else 1.0

    def sees(self, task: str) -> bool:
        return self.tenant is None or self.tenant.allows(task)


ADMIN = Caller()


def identify(key: str | None, admin_key: str | None, tenants: list[TenantRecord]) -> Caller | None:
    """The caller a bearer key names; None when the endpoint is guarded and the key opens nothing.
    Every tenant's digest is compared, in constant time, whichever matches."""
    if admin_key is None and not tenants:  # revoked tenants count: revoking the last one opens nothing
        return ADMIN
    if key is None:
        return None
    matches = [tenant for tenant in tenants if tenant.holds(key)]  # no early exit: the time says nothing
    if admin_key is not None and _same(key, admin_key):
        return ADMIN
    return Caller(matches[0]) if matches else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Share:
    """This replica's share of one tenant's limits; None where the tenant has no such limit."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    concurrency: int | None

    @classmethod
    def of(cls, tenant: TenantRecord, replicas: int) -> "Share":
        return cls(tenant.requests_per_minute / replicas if tenant.requests_per_minute else None,
                   tenant.tokens_per_minute / replicas if tenant.tokens_per_minute else None,
                   math.ceil(tenant.concurrency / replicas) if tenant.concurrency else None)


@dataclass
class TenantUse:
    """One tenant's use of this replica: its request bucket, generated tokens in the last
    minute, requests in flight."""

    requests: float  # tokens left in the request bucket
    refilled_at: float
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    in_flight: int = 0


class Quotas:
    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self._use: dict[str, TenantUse] = {}
        self._lock = threading.Lock()

    def admit(self, tenant: TenantRecord) -> None:
        """Count one request in, or raise `RateLimited` (429) naming the limit, with OpenAI's
        `x-ratelimit-*` headers and Retry-After."""
        now, share = time.monotonic(), Share.of(tenant, self.replicas)
        rate, budget = share.requests_per_minute, share.tokens_per_minute
        with self._lock:
            use = self._use_of(tenant.name, share, now)
            used = sum(n for _, n in use.tokens)
            headers = self._headers(use, share, used, now)
            if share.concurrency and use.in_flight >= share.concurrency:
                raise RateLimited(f"tenant {tenant.name} has {use.in_flight} requests in flight, its limit here; "
                                  "retry when one ends", {**headers, "Retry-After": "1"}, "concurrency")
            if rate and use.requests < 1:
                wait = (1 - use.requests) * 60 / rate
                raise RateLimited(f"tenant {tenant.name} is over its request rate ({tenant.requests_per_minute:g} per "
                                  "minute)", {**headers, "Retry-After": str(math.ceil(wait))}, "requests")
            if budget and used >= budget:
                wait = use.tokens[0][0] + WINDOW_S - now
                raise RateLimited(f"tenant {tenant.name} is over its token budget ({tenant.tokens_per_minute} generated "
                                  "tokens per minute)", {**headers, "Retry-After": str(max(1, math.ceil(wait)))}, "tokens")
            if rate:
                use.requests -= 1
            use.in_flight += 1

    def release(self, tenant: TenantRecord, generated: int) -> None:
        """A request of `tenant` ended, having generated `generated` tokens."""
        now = time.monotonic()
        with self._lock:
            use = self._use_of(tenant.name, Share.of(tenant, self.replicas), now)
            use.in_flight = max(0, use.in_flight - 1)
            if generated:
                use.tokens.append((now, generated))

    def _use_of(self, name: str, share: Share, now: float) -> TenantUse:
        """The tenant's use, its request bucket refilled and its token window moved to `now`."""
        rate = share.requests_per_minute
        use = self._use.setdefault(name, TenantUse(requests=rate or 0.0, refilled_at=now))
        if rate:
            use.requests = min(rate, use.requests + (now - use.refilled_at) * rate / 60)
        use.refilled_at = now
        while use.tokens and use.tokens[0][0] <= now - WINDOW_S:
            use.tokens.popleft()
        return use

    @staticmethod
    def _headers(use: TenantUse, share: Share, used: int, now: float) -> dict[str, str]:
        """OpenAI's rate-limit headers, for this replica's share of the limits."""
        rate, budget = share.requests_per_minute, share.tokens_per_minute
        headers = {}
        if rate:
            headers |= {"x-ratelimit-limit-requests": f"{rate:g}",
                        "x-ratelimit-remaining-requests": str(max(0, math.floor(use.requests))),
                        "x-ratelimit-reset-requests": f"{max(0.0, (1 - use.requests) * 60 / rate):.1f}s"}
        if budget:
            reset = use.tokens[0][0] + WINDOW_S - now if use.tokens else 0.0
            headers |= {"x-ratelimit-limit-tokens": f"{budget:g}",
                        "x-ratelimit-remaining-tokens": str(max(0, math.floor(budget - used))),
                        "x-ratelimit-reset-tokens": f"{max(0.0, reset):.1f}s"}
        return headers
