"""Stats drivers: one small file each, behind the :class:`StatsDriver` protocol."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

# One write: (key, granularity, bucket start in unix seconds, flat dotted values).
Op = tuple[str, str, int, dict[str, Any]]
Ref = tuple[str, str, int]


class StatsDriver(Protocol):
    mode: str

    def inc(self, ops: Sequence[Op]) -> None:
        """Add the values to the buckets (creating them), all in one write."""

    def set(self, ops: Sequence[Op]) -> None:
        """Set the values in the buckets (other values of the bucket stay)."""

    def get(self, refs: Sequence[Ref]) -> list[dict[str, Any]]:
        """Nested values of each bucket (``{}`` where there is none), in order."""

    def close(self) -> None: ...


def open_stats_driver(url: str, *, mode: str = "full", expire_after: int | None = None) -> StatsDriver:
    from ...stores import _scheme, sqlite_path

    scheme = _scheme(url, "stats store", ("sqlite", "mongodb", "mongodb+srv"))
    if scheme == "sqlite":
        from .sqlite import SQLiteStatsDriver

        return SQLiteStatsDriver(sqlite_path(url, "stats store"), mode=mode)
    from .mongo import MongoStatsDriver

    return MongoStatsDriver(url, mode=mode, expire_after=expire_after)
