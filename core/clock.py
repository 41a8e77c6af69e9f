"""The one clock of records and windows: timezone-aware UTC, so that every stored time compares."""

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
