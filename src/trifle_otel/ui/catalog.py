"""What the stats say about the executions: keys in use, which of them are trace keys, and
per-state counts for a range.  Every read is a handful of bucket lookups, never a scan of
the trace index, so the list page stays fast at any size.

Trace keys are told from other stat keys by the default execution stat they carry
(``entries`` and ``states``, tracked on the trace key of every finished execution).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

from ..stats.api import Stats, keys_in_use
from ..stats.granularity import Granularity, parse_granularity
from ..stats.values import merge_sum

_APPROX = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "mo": 2_629_746, "q": 7_889_238, "y": 31_556_952}
STATES = ("success", "warning", "error")


def approx_seconds(g: Granularity) -> int:
    return g.n * _APPROX[g.unit]


def pick_granularity(granularities: Sequence[str], since: datetime, until: datetime, max_points: int = 200) -> str:
    """The finest configured granularity that draws the range in at most ``max_points`` buckets
    (the coarsest one when none does)."""
    span = max(1.0, (until - since).total_seconds())
    parsed = sorted((parse_granularity(g) for g in granularities), key=approx_seconds)
    for g in parsed:
        if span / approx_seconds(g) <= max_points:
            return g.text
    return parsed[-1].text


def bucket_count(granularity: str, since: datetime, until: datetime) -> int:
    return int(max(0.0, (until - since).total_seconds()) // approx_seconds(parse_granularity(granularity))) + 1


@dataclass
class KeyInfo:
    name: str
    tracks: int
    trace: bool  # carries the default execution stat: its key is a trace key


class Catalog:
    """Keys in use over the last ``window`` (cached for ``ttl`` seconds)."""

    def __init__(self, stats: Callable[[], Stats], granularities: Sequence[str], *, window_days: int = 30,
                 ttl: float = 30.0, clock: Callable[[], datetime]) -> None:
        self._stats = stats
        self.granularities = list(granularities)
        self.window = timedelta(days=window_days)
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[KeyInfo]] | None = None

    def keys(self) -> list[KeyInfo]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl:
                return self._cached[1]
        infos = self._read()
        with self._lock:
            self._cached = (time.monotonic(), infos)
        return infos

    def _read(self) -> list[KeyInfo]:
        stats = self._stats()
        now = self.clock()
        since = now - self.window
        g = pick_granularity(self.granularities, since, now, max_points=8)
        counts = keys_in_use(stats, since, now, g)
        if not counts:
            return []
        starts = stats.floor.timeline(since, now, parse_granularity(g))
        refs = [(name, g, int(t.timestamp())) for name in counts for t in starts]
        values = stats.driver.get(refs) if refs else []
        shapes: dict[str, dict[str, Any]] = {}
        for (name, _, _), value in zip(refs, values):
            merge_sum(shapes.setdefault(name, {}), value)
        return [
            KeyInfo(name, count, "entries" in shapes.get(name, {}) and "states" in shapes.get(name, {}))
            for name, count in counts.items()
        ]

    def trace_keys(self) -> list[str]:
        return [k.name for k in self.keys() if k.trace]



def prefixes(keys: Sequence[str], limit: int = 200) -> list[str]:
    """Key prefixes worth filtering by: every segment of these keys (``a/b`` → ``a``, ``a/b``)."""
    seen: dict[str, None] = {}
    for key in keys:
        pieces = key.split("/")
        for i in range(1, len(pieces) + 1):
            seen["/".join(pieces[:i])] = None
    return sorted(seen)[:limit]


def matches_prefix(key: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or key == prefix or key.startswith(prefix + "/")


def state_counts(stats: Stats, keys: Sequence[str], since: datetime, until: datetime,
                 granularity: str) -> dict[str, int]:
    """Finished executions per state in the buckets that cover the range, over ``keys``."""
    g = parse_granularity(granularity)
    starts = stats.floor.timeline(since, until, g)
    refs = [(key, g.text, int(t.timestamp())) for key in keys for t in starts]
    out = {state: 0 for state in STATES}
    for value in stats.driver.get(refs) if refs else []:
        for state, count in (value.get("states") or {}).items():
            if isinstance(count, (int, float)) and not isinstance(count, bool):
                out[state] = out.get(state, 0) + int(count)
    return out
