"""Tenants: the teams that share one endpoint, each with its own key, the tasks it may use
(names, with `*` for any run of characters), its quotas and its fair-share weight.

A tenant is one file, `tenants/<name>.json`; revoking it marks it so (`revoked_at`), and the
name may be added again, with a new key. Once a registry has had a tenant, its endpoint
stays guarded: revoking the last tenant does not open it to clients without a key. Its key
is shown once, when the tenant is added, and stored only as its SHA-256: the key is 32
random bytes, so a plain digest cannot be reversed, and a stolen registry opens nothing.
Keys are compared digest against digest in constant time (`hmac.compare_digest`), every
tenant's every time. Adding or revoking a tenant is an edit through the journal under
`TENANTS` (a name no task can have), under the tenants' own lock: its change-feed entry
reaches the replicas at their next refresh even when the writer dies after the record.
"""

import fnmatch
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Annotated

from pydantic import Field, field_validator

from promptmux.core.clock import utc_now
from promptmux.core.errors import ConflictError, NotFoundError
from promptmux.core.strict_model import StrictModel
from promptmux.registry.edits import TENANTS, TENANTS_DIR, Edit
from promptmux.registry.names import safe_name, validate_name
from promptmux.registry.records import RecordFiles

KEY_PREFIX = "pmx-"
PATTERN = re.compile(r"^[a-z0-9*][a-z0-9._*-]{0,63}$")


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TenantRecord(StrictModel):
    name: Annotated[str, safe_name("tenant name")]
    tasks: list[str] = Field(min_length=1, description="task names the tenant may use; * matches any run of characters")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: float | None = Field(None, gt=0, description="request rate limit (whole endpoint)")
    tokens_per_minute: int | None = Field(None, ge=1, description="generated tokens per minute (whole endpoint)")
    concurrency: int | None = Field(None, ge=1, description="requests in flight at once (whole endpoint)")
    weight: float = Field(1.0, gt=0, le=1000, description="share of decode slots while others wait")
    created_at: datetime = Field(default_factory=utc_now)
    revoked_at: datetime | None = None

    @field_validator("tasks")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not PATTERN.fullmatch(pattern):
                raise ValueError(f"invalid task pattern {pattern!r}: task-name characters and *")
        return patterns

    def allows(self, task: str) -> bool:
        return any(fnmatch.fnmatchcase(task, pattern) for pattern in self.tasks)

    def holds(self, key: str) -> bool:
        """Whether `key` is this tenant's, and not revoked (the digest is compared either way)."""
        return hmac.compare_digest(key_digest(key), self.key_sha256) and self.revoked_at is None


class TenantStore:
    def __init__(self, files: RecordFiles) -> None:
        self.files = files

    def add(self, name: str, tasks: list[str], *, requests_per_minute: float | None = None,
            tokens_per_minute: int | None = None, concurrency: int | None = None,
            weight: float = 1.0) -> tuple[TenantRecord, str]:
        """Create a tenant with a new key; the key is returned once and never stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = TenantRecord(name=name, tasks=tasks, key_sha256=key_digest(key), requests_per_minute=requests_per_minute,
                              tokens_per_minute=tokens_per_minute, concurrency=concurrency, weight=weight)
        text = record.model_dump_json(indent=2)
        with self.files.editing(TENANTS):
            if self.files.announced(TENANTS, "tenant", lambda: self.files.storage.create(_rel(name), text.encode())):
                return record, key
            if self.get(name).revoked_at is None:
                raise ConflictError(f"tenant {name!r} exists; revoke it first to give it a new key")
            self.files.journal.run(Edit(task=TENANTS, what="tenant", writes={_file(name): text}))
        return record, key

    def get(self, name: str) -> TenantRecord:
        record = self.files.read(TenantRecord, _rel(name))
        if record is None:
            raise NotFoundError(f"unknown tenant {name!r}")
        return record

    def all(self) -> list[TenantRecord]:
        """Every tenant the registry has had, revoked ones included (marked)."""
        records = []
        for filename in sorted(self.files.storage.listdir(TENANTS_DIR)):
            if filename.endswith(".json") and not filename.startswith("."):
                record = self.files.read(TenantRecord, f"{TENANTS_DIR}/{filename}")
                if record is not None:
                    records.append(record)
        return records

    def revoke(self, name: str) -> None:
        """Revoke a tenant: its key opens nothing from the replicas' next refresh on."""
        with self.files.editing(TENANTS):
            record = self.get(name)
            if record.revoked_at is not None:
                raise ConflictError(f"tenant {name!r} was revoked already, at {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
            revoked = record.model_copy(update={"revoked_at": utc_now()})
            self.files.journal.run(Edit(task=TENANTS, what="tenant", writes={_file(name): revoked.model_dump_json(indent=2)}))


def _file(name: str) -> str:
    return f"{validate_name(name, 'tenant name')}.json"


def _rel(name: str) -> str:
    return f"{TENANTS_DIR}/{_file(name)}"
