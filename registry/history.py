"""A task's history: the audit trail people read (`promptmux registry history`), every
change to how the task is served with who made it and why: alias moves, rollouts,
automatic decisions and the statistics they were made on, registrations (imports
included: `details.imported_from`), archiving, unarchiving and deleting. A deleted task's
history stays (`RecordFiles.remove_task`), ending with who deleted it. (Servers follow the registry's
change feed, `change_feed.py`, instead.)

Each change is one immutable file, `tasks/<task>/history/<time>-<random>.json`, never
rewritten: writers on any number of machines append without conflicting, on a local disk
and on an object store alike, and the names sort in time order.
"""

import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from promptmux.core.clock import utc_now
from promptmux.core.strict_model import StrictModel

Action = Literal["alias", "alias-delete", "rollout", "rollout-clear", "auto-start", "step", "promote", "rollback",
                 "archive", "unarchive", "register", "delete"]
MANUAL = "manual"


class HistoryEntry(StrictModel):
    at: datetime = Field(default_factory=utc_now)
    actor: str = Field(MANUAL, description="who made it: manual (the CLI or the API) or controller")
    action: Action
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] | None = Field(None, description="the statistics the decision was made on")

    def file_name(self, key: str | None = None) -> str:
        """`<time>-<key>.json`; an edit passes a key derived from its id, so that applying it
        again creates the same name (and so never a second entry); else a random one."""
        return f"{self.at.strftime('%Y%m%dT%H%M%S.%f')}-{key or secrets.token_hex(4)}.json"

    def summary(self) -> str:
        details = ", ".join(f"{key}={value}" for key, value in self.details.items())
        return f"{self.action} ({details})" + (f": {self.reason}" if self.reason else "")
