"""Traffic as data: what every replica served per task and per tenant, a minute at a time,
so that a reader of the registry alone (the console, `promptmux ui`) sees the whole
endpoint's last hour, not one replica's memory.

Each replica appends one immutable window a minute while it has traffic:
`traffic/<hour>/<minute-second>-<replica>.json`, so the last hour is two folder listings
however long the registry has lived. Windows are kept `RETENTION_H` hours: each replica
removes the hour folders past that as it writes (removing one twice is harmless). The
automatic rollouts read their own, finer windows (`tasks/<task>/serving/`, `policy.py`).
"""

from datetime import datetime, timedelta
from hashlib import sha256

from pydantic import Field

from promptmux.core.clock import utc_now
from promptmux.core.strict_model import StrictModel
from promptmux.registry.records import RecordFiles

TRAFFIC_DIR = "traffic"
RETENTION_H = 24
HOUR_FORMAT = "%Y%m%dT%H"


class TrafficCounts(StrictModel):
    """One task's or one tenant's requests in a window."""

    requests: int = 0
    errors: int = Field(0, description="requests that failed on the server's side or timed out")
    tokens: int = Field(0, description="tokens generated")
    limited: int = Field(0, description="requests refused with 429 (a tenant's quota)")

    def add(self, other: "TrafficCounts") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.tokens += other.tokens
        self.limited += other.limited

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class TrafficWindow(StrictModel):
    """What one replica served between `start` and `end`, per task and per tenant ("" is the admin)."""

    replica: str
    start: datetime
    end: datetime = Field(default_factory=utc_now)
    tasks: dict[str, TrafficCounts] = Field(default_factory=dict)
    tenants: dict[str, TrafficCounts] = Field(default_factory=dict)

    def file_rel(self) -> str:
        replica = sha256(self.replica.encode()).hexdigest()[:12]
        return f"{TRAFFIC_DIR}/{self.start:{HOUR_FORMAT}}/{self.start:%M%S.%f}-{replica}.json"


class TrafficTotals(StrictModel):
    """The windows of a span summed: per task and per tenant."""

    since: datetime
    tasks: dict[str, TrafficCounts] = Field(default_factory=dict)
    tenants: dict[str, TrafficCounts] = Field(default_factory=dict)


class TrafficStore:
    def __init__(self, files: RecordFiles) -> None:
        self.files = files

    def record(self, window: TrafficWindow) -> None:
        """Append one replica's window, and remove the hours past the retention."""
        self.files.storage.write_bytes(window.file_rel(), window.model_dump_json().encode())
        oldest = f"{window.start - timedelta(hours=RETENTION_H):{HOUR_FORMAT}}"
        for hour in self.files.storage.listdir(TRAFFIC_DIR):
            if hour < oldest:
                self.files.storage.remove_tree(f"{TRAFFIC_DIR}/{hour}")

    def since(self, since: datetime) -> TrafficTotals:
        """Every replica's windows that ended after `since`, summed."""
        totals = TrafficTotals(since=since)
        first = f"{since:{HOUR_FORMAT}}"
        for hour in self.files.storage.listdir(TRAFFIC_DIR):
            if hour < first:
                continue
            for name in self.files.storage.listdir(f"{TRAFFIC_DIR}/{hour}"):
                rel = f"{TRAFFIC_DIR}/{hour}/{name}"
                data = self.files.read_or_none(rel)
                if data is None:  # removed since the listing
                    continue
                window = self.files.parse(TrafficWindow, data, rel)
                if window.end <= since:
                    continue
                for kept, counted in ((totals.tasks, window.tasks), (totals.tenants, window.tenants)):
                    for who, counts in counted.items():
                        kept.setdefault(who, TrafficCounts()).add(counts)
        return totals

    def last_hour(self) -> TrafficTotals:
        return self.since(utc_now() - timedelta(hours=1))
