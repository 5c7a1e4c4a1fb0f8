"""Small driver protocols: a trace index and a data store.  Drivers are one file each."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Sequence

from ..errors import ConfigError

TIME_FIELDS = ("first_at", "last_at", "expires_at")


@dataclass
class TraceQuery:
    """Search filters; every one is served by an index in every driver."""

    key: str | None = None  # key prefix on segment boundaries: "prices" matches "prices/calc"
    states: Sequence[str] = ()
    tags_any: Sequence[str] = ()
    tags_all: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    min_duration: float | None = None  # ms
    stuck_before: datetime | None = None  # running and started before this
    limit: int = 50
    cursor: str | None = None


@dataclass
class Page:
    records: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(first_at: float, reference: str) -> str:
    raw = json.dumps([first_at, reference], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        first_at, reference = json.loads(raw)
        return float(first_at), str(reference)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"cursor {cursor!r} is not valid: pass the next_cursor of a previous page") from None


class TraceIndex(Protocol):
    def upsert(self, records: Sequence[dict[str, Any]]) -> None:
        """Insert or replace records (idempotent: a retried write replaces)."""

    def get(self, reference: str) -> dict[str, Any] | None:
        """The record with this reference, or with this unique reference prefix."""

    def search(self, query: TraceQuery) -> Page: ...

    def delete(self, references: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class DataStore(Protocol):
    bucket_name: str  # the default bucket ("" for a directory)
    prefix: str  # the layout's <prefix> segment

    def bucket_for(self, reference: str) -> str:
        """The bucket an execution's data goes to (kept on its record as ``bucket_name``)."""

    def put(self, path: str, body: bytes, bucket: str | None = None) -> None: ...

    def put_many(self, items: Sequence[tuple[str, bytes, str | None]]) -> list[int]:
        """Write ``(path, body, bucket)`` items in as few round trips as the store allows.

        Returns the indexes of the items that were not written (their executions are
        retried alone); raises StoreError when none was.
        """

    def get(self, path: str, bucket: str | None = None) -> bytes | None:
        """The object's bytes, or None when there is no such object."""

    def delete_prefix(self, prefix: str, bucket: str | None = None) -> None: ...

    def close(self) -> None: ...
