"""Who is calling, what they may see, and how much they may ask of this replica.

A request's bearer key names its caller: the admin key (`ServeSettings.api_token`) sees
everything; a tenant's key (`registry.tenants`) sees the tasks its patterns match, and
any other task answers exactly as a task that does not exist. With no admin key and a
registry that never had a tenant the endpoint is open; otherwise a request without a
valid key gets 401 (a revoked tenant's key included).

Quotas are per tenant: a request rate, generated tokens per minute, and rows in flight (a
request holds one row per choice of every input: `n` × inputs). With N replicas each
replica holds 1/N of each limit (`Share`): with requests spread evenly, as Ray Serve's
router spreads them, the endpoint admits the limit.

A request reserves at admission what it can generate (rows × its max new tokens) and gives
back what it did not use when it ends; it is refused (429) when that does not fit in what
is left of this replica's share of the window, or when its rows do not fit this replica's
share of the concurrency cap. A replica with nothing of the tenant's in its window (or in
flight) still admits one request up to the tenant's whole limit, so that a request larger
than a share is served somewhere; one larger than the whole limit is refused (400). The
error bound: in any window, the tenant gets at most its limit plus one request's
reservation per replica (and holds at most its concurrency cap plus one request's rows per
replica); a tenant whose requests all land on one replica is refused from 1/N of its limit
on. Every answer, 200 or 429, carries OpenAI's `x-ratelimit-*` headers for this replica's
share, and a 429's message gives the same numbers.
"""

import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from promptmux.core.errors import InvalidRequestError, RateLimited
from promptmux.registry.tenant_store import TenantRecord

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
    concurrency: float | None

    @classmethod
    def of(cls, tenant: TenantRecord, replicas: int, scale: float = 1.0) -> "Share":
        """The share of one replica, the rate and token limits scaled from a minute to the window."""
        return cls(tenant.requests_per_minute * scale / replicas if tenant.requests_per_minute else None,
                   tenant.tokens_per_minute * scale / replicas if tenant.tokens_per_minute else None,
                   tenant.concurrency / replicas if tenant.concurrency else None)


@dataclass
class Charge:
    """Tokens one request holds in its tenant's window: its reservation until it ends, then
    what it generated."""

    at: float
    tokens: int


@dataclass
class TenantUse:
    """One tenant's use of this replica: its request bucket, the tokens charged in the window,
    rows in flight."""

    requests: float  # tokens left in the request bucket
    refilled_at: float
    charges: deque[Charge] = field(default_factory=deque)
    in_flight: int = 0

    @property
    def tokens(self) -> int:
        return sum(charge.tokens for charge in self.charges)


@dataclass(frozen=True)
class Reservation:
    """What an admitted request holds until it ends (`Quotas.release`), and the rate-limit
    headers its answer carries."""

    tenant: TenantRecord
    rows: int
    charge: Charge
    headers: dict[str, str]


class Quotas:
    def __init__(self, replicas: int = 1, window_s: float = WINDOW_S) -> None:
        self.replicas, self.window_s = replicas, window_s
        self._use: dict[str, TenantUse] = {}
        self._lock = threading.Lock()

    def admit(self, tenant: TenantRecord, rows: int, tokens: int) -> Reservation:
        """Count in a request of `rows` rows that can generate `tokens` tokens, or raise
        `RateLimited` (429) naming the limit and the numbers, with the `x-ratelimit-*` headers
        and Retry-After; `InvalidRequestError` (400) for a request no window could ever admit."""
        scale = self.window_s / WINDOW_S
        if tenant.concurrency and rows > tenant.concurrency:
            raise InvalidRequestError(f"this request has {rows} rows (n x inputs); tenant {tenant.name} may have "
                               f"{tenant.concurrency} in flight: send fewer choices or inputs")
        if tenant.tokens_per_minute and tokens > tenant.tokens_per_minute * scale:
            raise InvalidRequestError(f"this request can generate {tokens} tokens ({rows} rows x max tokens); tenant "
                               f"{tenant.name} may generate {tenant.tokens_per_minute * scale:g} per "
                               f"{self.window_s:g} s: ask for fewer tokens, choices or inputs")
        now, share = time.monotonic(), Share.of(tenant, self.replicas, scale)
        rate, budget, cap = share.requests_per_minute, share.tokens_per_minute, share.concurrency
        with self._lock:
            use = self._use_of(tenant.name, share, now)
            used, where = use.tokens, f"on this replica ({self.replicas} share the tenant's limits)"
            if cap and use.in_flight and use.in_flight + rows > cap:
                raise self._refused(f"tenant {tenant.name} has {use.in_flight} of its {cap:g} rows in flight {where}; "
                                    f"this request needs {rows}: retry when one ends", use, share, now, 1, "concurrency")
            if rate and use.requests < 1:
                wait = (1 - use.requests) * self.window_s / rate
                raise self._refused(f"tenant {tenant.name} is over its request rate {where}: {rate:g} per "
                                    f"{self.window_s:g} s", use, share, now, wait, "requests")
            if budget and used and used + tokens > budget:
                wait = use.charges[0].at + self.window_s - now
                raise self._refused(f"tenant {tenant.name} has {max(0, math.floor(budget - used))} of its {budget:g} "
                                    f"tokens per {self.window_s:g} s left {where}; this request reserves {tokens} "
                                    f"({rows} rows x max tokens)", use, share, now, wait, "tokens")
            if rate:
                use.requests -= 1
            use.in_flight += rows
            charge = Charge(now, tokens)
            use.charges.append(charge)
            return Reservation(tenant, rows, charge, self._headers(use, share, now))

    def release(self, reservation: Reservation, generated: int) -> None:
        """A request ended, having generated `generated` tokens: its rows leave, and what it
        reserved and did not generate goes back to the window."""
        tenant = reservation.tenant
        with self._lock:
            use = self._use_of(tenant.name, Share.of(tenant, self.replicas, self.window_s / WINDOW_S), time.monotonic())
            use.in_flight = max(0, use.in_flight - reservation.rows)
            reservation.charge.tokens = generated

    def _use_of(self, name: str, share: Share, now: float) -> TenantUse:
        """The tenant's use, its request bucket refilled and its token window moved to `now`."""
        rate = share.requests_per_minute
        use = self._use.setdefault(name, TenantUse(requests=rate or 0.0, refilled_at=now))
        if rate:
            use.requests = min(rate, use.requests + (now - use.refilled_at) * rate / self.window_s)
        use.refilled_at = now
        while use.charges and use.charges[0].at <= now - self.window_s:
            use.charges.popleft()
        return use

    def _refused(self, message: str, use: TenantUse, share: Share, now: float, wait: float, limit: str) -> RateLimited:
        headers = {**self._headers(use, share, now), "Retry-After": str(max(1, math.ceil(wait)))}
        return RateLimited(message, headers, limit)

    def _headers(self, use: TenantUse, share: Share, now: float) -> dict[str, str]:
        """OpenAI's rate-limit headers, for this replica's share of the limits in one window."""
        rate, budget = share.requests_per_minute, share.tokens_per_minute
        headers = {}
        if rate:
            headers |= {"x-ratelimit-limit-requests": f"{rate:g}",
                        "x-ratelimit-remaining-requests": str(max(0, math.floor(use.requests))),
                        "x-ratelimit-reset-requests": f"{max(0.0, (1 - use.requests) * self.window_s / rate):.1f}s"}
        if budget:
            reset = use.charges[0].at + self.window_s - now if use.charges else 0.0
            headers |= {"x-ratelimit-limit-tokens": f"{budget:g}",
                        "x-ratelimit-remaining-tokens": str(max(0, math.floor(budget - use.tokens))),
                        "x-ratelimit-reset-tokens": f"{max(0.0, reset):.1f}s"}
        return headers
