"""Checkpoints: when the write-ahead log may be trimmed, and what a restart replays.

The log holds two kinds of records: OTLP requests as received (``OTLP1 ...``, see
``ReceivedBatch.to_record``) and checkpoint records (``CARRY1 ...``) carrying forward the
spans of executions still open.  A checkpoint, run by the pipeline's worker:

1. **cut**: under the gate (see ``gate``), seals the log's current segment and takes the
   pipeline's queue, so the worker holds exactly what the log holds up to the cut;
2. the worker assembles it, writes every finished execution to the trace stores (all must
   succeed, else the checkpoint is abandoned and retried with backoff: nothing is trimmed
   while the stores are down);
3. **commit**: appends a checkpoint record with the spans still open and the cut, then
   writes the stats buffered since the last checkpoint *together with* an increment of
   this log's checkpoint mark in the stats store (one write: a single transaction with
   SQLite), then deletes the segments up to the cut.

Documents are idempotent (keyed by reference), stats increments are not; the mark is what
makes a crash count each execution once.  The stats store's mark says how many checkpoints
have had their stats written; on start, replay begins at the latest checkpoint record with
that number and takes only the requests after its cut: everything before is in the
stores, stats included, whether or not its segments were deleted before the crash.  The
mark is the row ``__trifle_otel_wal__::<log id>::0`` (``{"checkpoints": n}``), one per
sidecar home (``<home>/wal/ID``), outside the ``__system__key__`` list of keys.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from ..config import Config
from ..errors import OTLPDecodeError, PartialWriteError, StoreError
from ..ingest.otlp_intake import ReceivedBatch
from ..model import Span
from ..pipeline.carry import decode_spans, encode_spans
from ..pipeline.intake import Intake
from ..stats.drivers import Op, open_stats_driver
from ..stats.sink import ExecutionStats
from ..wal import WAL
from .gate import Gate

logger = logging.getLogger("trifle_otel")

CARRY_MAGIC = b"CARRY1 "
OTLP_MAGIC = b"OTLP1 "
MARK_KEY = "__trifle_otel_wal__"
TRIM_SHARE = 0.5  # a checkpoint is due early once the log holds this share of its bound
MAX_BACKOFF = 30.0
RARE = 6  # at most this many intervals between checkpoints, however little the log grew


def log_id(directory: Path) -> str:
    """This log's id (``<dir>/ID``, made once): names its checkpoint mark in the stats store."""
    path = directory / "ID"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    ident = uuid.uuid4().hex
    tmp = directory / ".ID.tmp"
    with open(tmp, "w") as fh:
        fh.write(ident + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return ident


def mark_op(ident: str) -> Op:
    return (MARK_KEY, ident, 0, {"checkpoints": 1})


def read_mark(config: Config, ident: str) -> int:
    """How many checkpoints of this log have had their stats written (StoreError if the
    stats store cannot be read)."""
    driver = open_stats_driver(config.resolved_stats_url(), mode=config.stats_mode, expire_after=config.stats_expire_after)
    try:
        (values,) = driver.get([(MARK_KEY, ident, 0)])
    finally:
        try:
            driver.close()
        except Exception:
            pass
    return int(values.get("checkpoints") or 0)


def carry_record(checkpoint: int, cut: int, spans: list[Span]) -> bytes:
    header = orjson.dumps({"checkpoint": checkpoint, "cut": cut, "spans": len(spans)})
    return CARRY_MAGIC + header + b"\n" + encode_spans(spans)


def carry_header(payload: bytes) -> dict[str, Any]:
    return orjson.loads(payload[len(CARRY_MAGIC) : payload.index(b"\n")])


def carried_spans(payload: bytes) -> list[Span]:
    return decode_spans(payload[payload.index(b"\n") + 1 :])[1]


class Checkpointer:
    """The pipeline's :class:`~trifle_otel.pipeline.worker.Durability`, over the log."""

    def __init__(self, wal: WAL, gate: Gate, ident: str, *, interval: float, count: int | None,
                 recount: Any = None) -> None:
        self.wal = wal
        self.gate = gate
        self.ident = ident
        self.interval = interval
        self.count = count  # checkpoints whose stats are written (None: read at the first commit)
        self.recount = recount  # () -> int: read the mark again from the stats store
        self.enabled = False  # once the log has been replayed
        self.committed = 0
        self.failures = 0
        self.last_error = ""
        self._cut: int | None = None
        self._next = time.monotonic() + interval
        self._retry_at = 0.0
        self._backoff = 0.5
        self.stats_waiting: Any = None  # () -> int: stats increments buffered since the last checkpoint
        self._carried_bytes = 0  # size of the last checkpoint record
        self._bytes_after = 0  # the log's size after the last checkpoint
        self._committed_at = time.monotonic()

    def due(self) -> bool:
        """At the interval when stats wait to be written or the log has grown by what the
        last checkpoint carried (each one writes the open executions' spans again: with many
        long jobs and little else, checkpoints come up to ``RARE`` intervals apart); early
        when the log passes ``TRIM_SHARE`` of its bound."""
        if not self.enabled:
            return False
        now = time.monotonic()
        if now < self._retry_at:
            return False
        if self.wal.bytes >= self.wal.max_bytes * TRIM_SHARE:
            return True
        if now < self._next:
            return False
        if self.stats_waiting is not None and self.stats_waiting():
            return True
        grown = self.wal.bytes - self._bytes_after
        return grown >= self._carried_bytes or now >= self._committed_at + RARE * self.interval

    def cut(self, intake: Intake) -> tuple[list[Any], list[Any]]:
        if not self.enabled:
            self._cut = None
            return intake.take()
        with self.gate.alone():
            self.wal.rotate()
            self._cut = max((s.segment for s in self.wal.segments()), default=0)
            return intake.take()

    def commit(self, carried: list[Span], stats: ExecutionStats) -> bool:
        cut, self._cut = self._cut, None
        if cut is None:
            return False
        if self.count is None:
            try:
                self.count = self.recount()
            except Exception as exc:
                self.abandon(f"stats store unavailable: {exc}")
                return False
        number = self.count + 1
        record = carry_record(number, cut, carried)
        try:
            self.wal.append_many([record], bounded=False)
        except Exception as exc:
            self.abandon(f"cannot write the write-ahead log: {exc}")
            return False
        error = _flush_with_mark(stats, mark_op(self.ident))
        if error is not None:
            if error.partial:
                self.count = None  # whether the mark went in is unknown: read it again
            self.abandon(f"stats store unavailable: {error.message}")
            return False
        self.count = number
        self.committed += 1
        for segment in self.wal.segments():
            if segment.segment <= cut:
                self.wal.release(segment.segment)
        self._next = self._committed_at = time.monotonic()
        self._next += self.interval
        self._carried_bytes = len(record)
        self._bytes_after = self.wal.bytes
        self._backoff = 0.5
        self._retry_at = 0.0
        self.last_error = ""
        return True

    def abandon(self, reason: str) -> None:
        self._cut = None
        self.failures += 1
        if reason != self.last_error or self.failures % 20 == 1:
            logger.warning("trifle-otel checkpoint failed (%s); the write-ahead log is kept and the checkpoint retried", reason)
        self.last_error = reason
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)


@dataclass
class _FlushError:
    message: str
    partial: bool = False


def _flush_with_mark(stats: ExecutionStats, mark: Op) -> _FlushError | None:
    """Write the buffered increments and the checkpoint mark in one driver call (one
    transaction with SQLite); put the increments back when it fails."""
    if not stats._ready():
        return _FlushError("cannot open the stats store")
    buffer = stats.buffer
    inc, sets = buffer.take()
    try:
        buffer.driver.inc([*inc, mark])
    except PartialWriteError as exc:
        failed = [op for op in exc.failed if tuple(op[:3]) != mark[:3]]
        buffer.put_back(failed, sets)
        buffer.counters.write_errors += 1
        return _FlushError(str(exc), partial=True)
    except Exception as exc:
        buffer.put_back(inc, sets)
        buffer.counters.write_errors += 1
        return _FlushError(str(exc) or repr(exc))
    buffer.counters.flushes += 1
    buffer.counters.writes += len(inc)
    if sets:  # (execution stats only increment; a set is written after, as the buffer does)
        try:
            buffer.driver.set(sets)
            buffer.counters.writes += len(sets)
        except Exception as exc:
            buffer.put_back([], sets)
            buffer.counters.write_errors += 1
            logger.warning("trifle-otel cannot write stats sets (%s); kept for the next checkpoint", exc)
    return None


# -- replay --------------------------------------------------------------------------------


@dataclass
class ReplayPlan:
    """What a start replays: the spans of one checkpoint record, and the requests after its cut."""

    mark: int
    carry_at: tuple[int, int] | None = None  # position of the checkpoint record replayed
    cut: int = 0  # requests in segments up to this one are in the stores
    warnings: list[str] = field(default_factory=list)


def plan_replay(wal: WAL, mark: int) -> ReplayPlan:
    plan = ReplayPlan(mark)
    latest: tuple[tuple[int, int], dict] | None = None
    chosen: tuple[tuple[int, int], dict] | None = None
    numbers: set[int] = set()
    for record in wal.replay():
        if not record.payload.startswith(CARRY_MAGIC):
            continue
        try:
            header = carry_header(record.payload)
        except (ValueError, orjson.JSONDecodeError):
            continue
        position = (record.position.segment, record.position.offset)
        numbers.add(int(header["checkpoint"]))
        latest = (position, header)
        if int(header["checkpoint"]) == mark:
            chosen = (position, header)
    if chosen is None and latest is not None and not (mark == 0 and numbers == {1}):
        # The stats store does not know this log's checkpoints (another stats store, or
        # one restored from a backup): go from the latest record, the closest guess.
        plan.warnings.append(
            f"the stats store's checkpoint mark ({mark}) matches no checkpoint in the write-ahead log "
            f"(found {sorted(numbers)}); replaying from the latest, so stats of some executions may be "
            "counted twice or not at all"
        )
        chosen = latest
    if chosen is not None:
        plan.carry_at = chosen[0]
        plan.cut = int(chosen[1]["cut"])
    return plan


@dataclass
class ReplayCounts:
    requests: int = 0
    spans: int = 0
    carried_spans: int = 0
    skipped_records: int = 0
    unreadable_records: int = 0


def replay_batches(wal: WAL, plan: ReplayPlan, counts: ReplayCounts) -> Iterator[list[Span]]:
    """The spans to feed the pipeline again, a record at a time, in log order."""
    for record in wal.replay():
        payload = record.payload
        position = (record.position.segment, record.position.offset)
        try:
            if payload.startswith(CARRY_MAGIC):
                if position != plan.carry_at:
                    counts.skipped_records += 1
                    continue
                spans = carried_spans(payload)
                counts.carried_spans += len(spans)
            elif payload.startswith(OTLP_MAGIC):
                if record.position.segment <= plan.cut and plan.carry_at is not None:
                    counts.skipped_records += 1
                    continue
                spans = ReceivedBatch.from_record(payload).spans  # (it was within the limit when taken)
                counts.requests += 1
                counts.spans += len(spans)
            else:
                raise OTLPDecodeError("unknown record type")
        except (OTLPDecodeError, StoreError, ValueError, KeyError, TypeError) as exc:
            counts.unreadable_records += 1
            logger.warning("trifle-otel: write-ahead log record at %s cannot be read (%s); skipped", position, exc)
            continue
        yield spans
