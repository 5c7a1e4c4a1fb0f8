"""The Trifle::Stats API: ``track``, ``assert_``, ``values``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from .. import lifecycle
from ..config import Config
from .buffer import StatsBuffer, epoch_seconds
from .drivers import StatsDriver, open_stats_driver
from .granularity import Floor, parse_granularity


class Stats:
    """Time-bucketed counters in the Trifle::Stats layout.

    ``Stats()`` uses the configured stats store (embedded SQLite by default)::

        stats = Stats()
        stats.track("prices/calculations", datetime.now(timezone.utc), {"count": 1, "codes": {"OK": 1}})
        stats.values("prices/calculations", since, until, "1h")   # {"at": [...], "values": [...]}

    Buffered by default: increments are coalesced and written by a background thread every
    ``flush_interval`` seconds, at exit and on SIGTERM.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        driver: StatsDriver | None = None,
        buffered: bool = True,
        mode: str | None = None,
        system_tracking: bool = True,
        flush_interval: float = 1.0,
        background: bool = True,
    ) -> None:
        self.config = config or Config()
        url, mode, expire = self.config.resolved_stats_url(), mode or self.config.stats_mode, self.config.stats_expire_after

        def open_driver() -> StatsDriver:
            return open_stats_driver(url, mode=mode, expire_after=expire)

        own_driver = driver is None
        driver = driver or open_driver()
        self.floor = Floor(self.config.time_zone, self.config.beginning_of_week)
        self.granularities = tuple(parse_granularity(g) for g in self.config.granularities)
        self.buffered = buffered
        self.buffer = StatsBuffer(
            driver,
            self.granularities,
            self.floor,
            system_tracking=system_tracking,
            flush_interval=flush_interval,
            thread=buffered and background,
        )
        if own_driver:
            self.buffer.reopen = open_driver  # a forked child opens its own connection
        if buffered:
            lifecycle.register(self, flush="flush_on_signal")

    @property
    def driver(self) -> StatsDriver:
        return self.buffer.driver

    def track(self, key: str, at: datetime | float, values: Mapping[str, Any]) -> None:
        self.buffer.track_values(key, at if type(at) is float else epoch_seconds(at), values)
        if not self.buffered:
            self.buffer.flush()

    def assert_(self, key: str, at: datetime | float, values: Mapping[str, Any]) -> None:
        self.buffer.assert_(key, at, values)
        if not self.buffered:
            self.buffer.flush()

    set = assert_

    def values(
        self, key: str, since: datetime, until: datetime, granularity: str, *, skip_blanks: bool = False
    ) -> dict[str, list]:
        """``{"at": [bucket starts], "values": [nested values]}``, empty buckets as ``{}``."""
        g = parse_granularity(granularity)
        self.flush()
        at = self.floor.timeline(since, until, g)
        values = self.buffer.driver.get([(key, g.text, int(t.timestamp())) for t in at])
        if skip_blanks:
            kept = [(a, v) for a, v in zip(at, values) if v]
            at, values = [a for a, _ in kept], [v for _, v in kept]
        return {"at": at, "values": values}

    def flush(self) -> None:
        self.buffer.flush()

    def flush_on_signal(self) -> None:
        try:
            self.buffer.flush(lock_timeout=2.0)
        except Exception:
            pass  # kept in the buffer; written at exit

    def shutdown(self) -> None:
        lifecycle.unregister(self)
        self.buffer.shutdown()
        if self.buffer.driver is not None:
            self.buffer.driver.close()

    def stats(self) -> dict[str, int]:
        return self.buffer.stats()


def keys_in_use(stats: Stats, since: datetime, until: datetime, granularity: str = "1d") -> dict[str, int]:
    """Stat keys written in the range, from the system tracking values (name → count)."""
    from .identifier import SYSTEM_KEY

    out: dict[str, int] = {}
    for values in stats.values(SYSTEM_KEY, since, until, granularity)["values"]:
        for name, count in (values.get("keys") or {}).items():
            out[name] = out.get(name, 0) + count
    return dict(sorted(out.items()))


__all__ = ["Stats", "keys_in_use"]
