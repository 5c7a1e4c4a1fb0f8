"""The stats buffer: increments coalesced in memory, written as one bulk write per flush.

Tracks are summed per (key, cell) as they come (floats stay floats; a cell is the seconds
that share their bucket at every granularity: with the default list, a minute), then spread
over every granularity's buckets at flush, so the store writes per flush grow with the distinct
buckets touched, not with the number of tracks, and a track costs its values, not values ×
granularities.  A failed flush puts its increments back (summed with what came meanwhile)
and is retried; past ``max_buckets`` entries new increments are dropped and counted, so an
outage cannot grow memory without bound.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from ..errors import PartialWriteError
from .drivers import Op, StatsDriver
from .granularity import Floor, Granularity
from .identifier import SYSTEM_KEY
from .values import add_nested, flatten_any, sanitize_name

logger = logging.getLogger("trifle_otel")

_buffers: "weakref.WeakSet[StatsBuffer]" = weakref.WeakSet()
_inherited: list[Any] = []  # drivers a forked child inherited: never used or closed there


def _after_fork_in_child() -> None:
    for buffer in list(_buffers):
        buffer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

Bucket = tuple[str, str, int]


@dataclass
class BufferCounters:
    tracks: int = 0
    flushes: int = 0
    writes: int = 0
    write_errors: int = 0
    spilled: int = 0
    dropped: int = 0


CELL_CACHE = 20_000  # seconds whose cell is remembered (at one a second of real time, 5.5 hours)
MIN_SECONDS = -2_208_988_800  # 1900-01-01
MAX_SECONDS = 253_370_764_800  # 9998-12-31: every bucket of it, a year included, has an end


def _second(ts: float) -> int:
    if not MIN_SECONDS <= ts < MAX_SECONDS:
        hint = " (it looks like milliseconds: divide by 1000)" if MAX_SECONDS <= ts < MAX_SECONDS * 1000 else ""
        raise ValueError(f"stats time {ts!r} is not epoch seconds between 1900 and 9998{hint}")
    return int(ts // 1)


def epoch_seconds(at: datetime | float | int) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("naive datetime: give stats times with a time zone (e.g. datetime.now(timezone.utc))")
        return at.timestamp()
    return float(at)


class StatsBuffer:
    def __init__(
        self,
        driver: StatsDriver,
        granularities: Iterable[Granularity],
        floor: Floor,
        *,
        system_tracking: bool = True,
        flush_interval: float = 1.0,
        flush_size: int = 10_000,
        max_buckets: int = 200_000,
        thread: bool = False,
    ) -> None:
        self.driver = driver
        self.granularities = tuple(granularities)
        self.floor = floor
        self.system_tracking = system_tracking
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.max_buckets = max_buckets
        self.counters = BufferCounters()
        self._raw: dict[tuple[str, int], dict[str, Any]] = {}  # (key, cell's second) -> values
        self._calls: dict[tuple[str, int], int] = {}  # (key, cell's second) -> calls (system tracking)
        self._cell_of: dict[int, int] = {}  # second -> the second standing for its cell
        self._cell_second: dict[tuple[int, ...], int] = {}  # cell (its bucket starts) -> that second
        self._inc: dict[Bucket, dict[str, Any]] = {}  # already spread: put back or replayed
        self._set: dict[Bucket, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._last_flush = time.monotonic()
        self._thread: threading.Thread | None = None
        self._background = thread
        self.reopen: Callable[[], StatsDriver] | None = None  # a new driver, for a forked child
        if thread:
            self._start()
        _buffers.add(self)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trifle-otel-stats", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        """Buffered increments belong to the parent (it writes them), and so do its driver's
        connections and any lock its threads held."""
        self._raw, self._calls, self._inc, self._set = {}, {}, {}, {}
        self._lock, self._flush_lock, self._wake = threading.Lock(), threading.Lock(), threading.Event()
        self.counters = BufferCounters()
        if self.reopen is not None:
            _inherited.append(self.driver)
            self.driver = None  # type: ignore[assignment]  # reopened on the next flush
        if self._background and not self._stopped:
            self._start()

    # -- writing -----------------------------------------------------------------------

    def track(self, key: str, at: datetime | float, values: Mapping[str, Any]) -> None:
        """Add nested numeric ``values`` to ``key`` in the bucket of ``at`` at every granularity."""
        self.track_values(key, epoch_seconds(at), values)

    def track_values(self, key: str, ts: float, values: Mapping[str, Any]) -> None:
        """``track`` with nested ``values``, added straight into the (key, cell) sums: no
        flat copy is made first (this is the API's hot path)."""
        second = int(ts) if 0 <= ts < MAX_SECONDS else _second(ts)
        cell = self._cell_of.get(second)
        ident = (key, cell if cell is not None else self._cell(second))
        with self._lock:
            raw = self._raw
            target = raw.get(ident)
            if target is not None:
                if not add_nested(target, values):
                    return
                full = False  # (the buffer grows only by new entries)
            else:
                if len(raw) >= self.max_buckets:
                    self.counters.dropped += 1
                    return
                target = {}
                if not add_nested(target, values):
                    return
                raw[ident] = target
                full = len(raw) >= self.flush_size
            self.counters.tracks += 1
            if self.system_tracking:
                calls = self._calls
                calls[ident] = calls.get(ident, 0) + 1
        if full and self._thread is not None:
            self._wake.set()

    def track_flat(self, key: str, ts: float, flat: Mapping[str, Any], count: int = 1) -> None:
        """Add flat dotted ``values``.  They are summed per (key, cell) here, and spread over
        the granularities' buckets at flush: every bucket is a whole number of seconds, so the
        result is the same, and a track costs its values, not values × granularities."""
        if not flat:
            return
        second = _second(ts)
        cell = self._cell_of.get(second)
        ident = (key, cell if cell is not None else self._cell(second))
        with self._lock:
            self.counters.tracks += 1
            raw = self._raw
            values = raw.get(ident)
            if values is None:
                if len(raw) >= self.max_buckets:
                    self.counters.dropped += 1
                    return
                raw[ident] = dict(flat)
            else:
                get = values.get
                for path, value in flat.items():
                    values[path] = get(path, 0) + value
            if self.system_tracking:
                calls = self._calls
                calls[ident] = calls.get(ident, 0) + count
            full = len(raw) >= self.flush_size
        if full and self._thread is not None:
            self._wake.set()

    def track_many(self, tracks: Iterable[tuple], count: int = 1) -> None:
        """``track_flat`` for several ``(key, ts, flat values, ...)`` tracks under one lock (an
        execution's tracks at once)."""
        items = []
        cell_of = self._cell_of
        for track in tracks:
            if track[2]:
                ts = track[1]
                if 0 <= ts < MAX_SECONDS:  # (the usual time, checked without a call)
                    second = int(ts)
                else:
                    try:
                        second = _second(ts)
                    except ValueError:  # a time out of range: that track only is refused
                        self.counters.dropped += 1
                        continue
                cell = cell_of.get(second)
                items.append((track[0], cell if cell is not None else self._cell(second), track[2]))
        if not items:
            return
        system = self.system_tracking
        with self._lock:
            raw = self._raw
            calls = self._calls
            for key, cell, flat in items:
                ident = (key, cell)
                values = raw.get(ident)
                if values is None:
                    if len(raw) >= self.max_buckets:
                        self.counters.dropped += 1
                        continue
                    raw[ident] = dict(flat)
                else:
                    get = values.get
                    for path, value in flat.items():
                        values[path] = get(path, 0) + value
                if system:
                    calls[ident] = calls.get(ident, 0) + count
            self.counters.tracks += len(items)
            full = len(raw) >= self.flush_size
        if full and self._thread is not None:
            self._wake.set()

    def _cell(self, second: int) -> int:
        """The second that stands for ``second``'s cell: the first one of that cell seen.

        Tracks of one cell then sum into one entry, so a buffer holds an entry per key and
        minute, not per key and second (fewer dicts made, and fewer to spread at flush).
        The spread maps that second to the same buckets, so the sums are exact.  Both maps
        are bounded; if they are cleared, a cell may get a second entry, which the spread
        sums with the first."""
        cell = tuple([self.floor.bucket(second, g) for g in self.granularities])
        if len(self._cell_of) >= CELL_CACHE:
            self._cell_of, self._cell_second = {}, {}
        standing = self._cell_second.setdefault(cell, second)
        self._cell_of[second] = standing
        return standing

    def _spread(self, raw: dict[tuple[str, int], dict[str, Any]], calls: dict[tuple[str, int], int]) -> dict[Bucket, dict[str, Any]]:
        """Per-cell sums → per-bucket sums at every granularity (plus system tracking).

        Entries are first summed per *cell* (tracks already came summed per cell; asserts'
        calls and entries made after the cell maps were cleared come per second).  A cell
        lies inside one bucket of each granularity whatever the zone or DST does, so summing
        it first is exact, and the spread then costs cells × granularities, not seconds ×
        granularities."""
        grans = self.granularities
        texts = [g.text for g in grans]
        bucket_of = self.floor.bucket
        cells: dict[int, tuple[int, ...]] = {}
        for _, second in (*raw, *calls):
            if second not in cells:
                cells[second] = tuple([bucket_of(second, g) for g in grans])  # seconds were range-checked on track
        by_cell: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        for (key, second), values in raw.items():
            ident = (key, cells[second])
            target = by_cell.get(ident)
            if target is None:
                by_cell[ident] = values  # taken from the buffer: ours to reuse
            else:
                get = target.get
                for path, value in values.items():
                    target[path] = get(path, 0) + value
        out: dict[Bucket, dict[str, Any]] = {}
        for (key, cell), values in by_cell.items():
            for text, start in zip(texts, cell):
                ident = (key, text, start)
                target = out.get(ident)
                if target is None:
                    out[ident] = dict(values)
                else:
                    get = target.get
                    for path, value in values.items():
                        target[path] = get(path, 0) + value
        if calls:
            counts: dict[tuple[str, tuple[int, ...]], int] = {}
            for (key, second), n in calls.items():
                ident2 = (key, cells[second])
                counts[ident2] = counts.get(ident2, 0) + n
            for (key, cell), n in counts.items():
                path = "keys." + sanitize_name(key)
                for text, start in zip(texts, cell):
                    ident = (SYSTEM_KEY, text, start)
                    system = out.get(ident)
                    if system is None:
                        system = out[ident] = {"count": 0}
                    system["count"] += n
                    system[path] = system.get(path, 0) + n
        return out

    def assert_(self, key: str, at: datetime | float, values: Mapping[str, Any]) -> None:
        """Set ``values`` in the buckets of ``at`` (the latest assert wins)."""
        second = _second(epoch_seconds(at))
        flat = flatten_any(values)
        with self._lock:
            for g in self.granularities:
                bucket = self.floor.bucket(second, g)
                self._set.setdefault((key, g.text, bucket), {}).update(flat)
            if self.system_tracking:
                self._calls[(key, second)] = self._calls.get((key, second), 0) + 1

    @property
    def pending(self) -> int:
        return len(self._raw) + len(self._calls) + len(self._inc) + len(self._set)

    def _swap(self) -> tuple:
        """Take everything buffered (caller holds the lock; spread it after releasing it)."""
        taken = (self._raw, self._calls, self._inc, self._set)
        self._raw, self._calls, self._inc, self._set = {}, {}, {}, {}
        return taken

    def _spread_taken(self, taken: tuple) -> tuple[dict[Bucket, dict[str, Any]], dict[Bucket, dict[str, Any]]]:
        raw, calls, inc, sets = taken
        # What was already held (put back, replayed) comes first: if the buffer must cut at
        # max_buckets, it cuts the newest, not the sums it has been keeping.
        spread = inc
        for ident, values in self._spread(raw, calls).items():
            target = spread.get(ident)
            if target is None:
                spread[ident] = values
            else:
                for path, value in values.items():
                    target[path] = target.get(path, 0) + value
        return spread, sets

    def flush(self, lock_timeout: float = -1) -> int:
        """Write everything buffered (one bulk write); returns the buckets written.

        ``lock_timeout``: give up (returning 0) rather than wait longer for the buffer, as a
        signal handler must: the thread it interrupted may be the one holding it.
        """
        if self.driver is None and self.reopen is not None:
            self.driver = self.reopen()
        if not self._flush_lock.acquire(timeout=lock_timeout):
            return 0
        try:
            if not self._lock.acquire(timeout=lock_timeout):
                return 0
            try:
                taken = self._swap()
            finally:
                self._lock.release()
            inc, sets = self._spread_taken(taken)
            return self._write(inc, sets)
        finally:
            self._flush_lock.release()

    def _write(self, inc: dict[Bucket, dict[str, Any]], sets: dict[Bucket, dict[str, Any]]) -> int:
        self._last_flush = time.monotonic()
        if not inc and not sets:
            return 0
        self.counters.flushes += 1
        written = len(inc) + len(sets)
        try:
            if inc:
                self.driver.inc([(k, g, at, v) for (k, g, at), v in inc.items()])
                inc = {}
            if sets:
                self.driver.set([(k, g, at, v) for (k, g, at), v in sets.items()])
        except PartialWriteError as exc:
            # Only what was not applied goes back: nothing is counted twice.
            self.counters.write_errors += 1
            failed = {(k, g, at): v for k, g, at, v in exc.failed}
            if inc:
                self._put_back(failed, sets)
            else:
                self._put_back({}, failed)
            logger.warning("trifle-otel wrote stats partly (%s); %d buckets kept for retry", exc, self.pending)
            raise
        except Exception as exc:
            self.counters.write_errors += 1
            self._put_back(inc, sets)
            logger.warning("trifle-otel cannot write stats (%s); %d buckets kept for retry", exc, self.pending)
            raise
        self.counters.writes += written
        return written

    def flush_if_due(self) -> None:
        if self.pending and (
            time.monotonic() - self._last_flush >= self.flush_interval or self.pending >= self.flush_size
        ):
            try:
                self.flush()
            except Exception:
                pass  # counted and kept; retried on the next call

    def take(self) -> tuple[list[Op], list[Op]]:
        """Everything buffered, as operations, leaving the buffer empty (to spill it)."""
        with self._lock:
            taken = self._swap()
        inc, sets = self._spread_taken(taken)
        return [(k, g, at, v) for (k, g, at), v in inc.items()], [(k, g, at, v) for (k, g, at), v in sets.items()]

    def put_back(self, inc: list[Op], sets: list[Op] = ()) -> None:
        """Add operations back (replayed from a spill)."""
        self._put_back({(k, g, at): dict(v) for k, g, at, v in inc}, {(k, g, at): dict(v) for k, g, at, v in sets})

    def _put_back(self, inc: dict[Bucket, dict[str, Any]], sets: dict[Bucket, dict[str, Any]]) -> None:
        with self._lock:
            for ident, values in inc.items():
                current = self._inc.get(ident)
                if current is None:
                    if len(self._inc) >= self.max_buckets:
                        self.counters.dropped += 1
                        continue
                    self._inc[ident] = values
                else:
                    for path, value in values.items():
                        current[path] = current.get(path, 0) + value
            for ident, values in sets.items():
                self._set[ident] = {**values, **self._set.get(ident, {})}

    # -- background flushing -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                time.sleep(min(self.flush_interval, 1.0))

    def shutdown(self) -> None:
        """Stop the flush thread and write what is left."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        try:
            self.flush()
        except Exception:
            pass

    def stats(self) -> dict[str, int]:
        return {**asdict(self.counters), "pending": self.pending}
