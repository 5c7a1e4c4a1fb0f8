"""A write-ahead log: what a receiver acknowledged is on disk before it says so.

The sidecar appends every accepted request here before it answers 200/OK, and replays the
log when it starts, so a crash or a restart loses nothing that was acknowledged (the
Collector's ``groupbytrace`` and Refinery keep such spans in memory only).

Layout: ``<dir>/wal-<sequence>.log`` segments, each an 8-byte header followed by framed
records ``[payload length: u32 LE][CRC32 of length + payload: u32 LE][payload]``.

- **Durable before return.**  ``append`` returns only after an ``fdatasync`` covered its
  record.  Concurrent appenders share syncs (group commit): a writer that finds a sync in
  progress waits for it and the next one covers everything written meanwhile, so many
  concurrent requests pay about one sync per round, not one each.
- **Segments and trimming.**  A new segment is started when the current one would pass
  ``segment_bytes``, and at every open (records are never appended after a possibly torn
  tail).  The owner knows when everything from a segment is stored; it then calls
  ``release(segment)``, or ``carry_forward(segment, payloads)`` to copy records still
  needed (spans of executions still open) into the current segment first.  A crash between
  the copy and the delete replays those records twice, never zero times (at least once:
  documents are keyed by reference, so a second write replaces).
- **Bounded.**  Past ``max_bytes`` on disk, ``append`` raises :class:`WALFull` and writes
  nothing: receivers refuse with 503 / UNAVAILABLE and ``Retry-After`` rather than drop.
  Carrying forward is allowed past the bound (it frees at least as much right after).
- **Replay never raises on bad data.**  A torn or corrupt record (a crash mid-write, a
  damaged disk) ends the reading of its segment and is counted in ``stats()``.
- A failed sync stops the log (every later append raises ``StoreError``): after an fsync
  error the kernel may have dropped the pages, so retrying could acknowledge lost data.
- One process at a time: the directory is locked (``flock``) while open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from .errors import StoreError, WALFull

__all__ = ["WAL", "WALFull", "Position", "Record", "SegmentInfo"]

logger = logging.getLogger("trifle_otel")

SEGMENT_HEADER = b"TRFLWAL1"
_FRAME = struct.Struct("<II")  # payload length, CRC32 of (length bytes + payload)
_LENGTH = struct.Struct("<I")
_NAME = re.compile(r"^wal-(\d{16})\.log$")
MAX_RECORD = 0xFFFFFFFF

_sync = getattr(os, "fdatasync", os.fsync)


class Position(NamedTuple):
    """Where a record is: its segment's sequence number and its offset in that segment."""

    segment: int
    offset: int


class Record(NamedTuple):
    position: Position
    payload: bytes


class SegmentInfo(NamedTuple):
    segment: int
    bytes: int
    current: bool


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int
    synced: int
    fd: int | None = None
    last_record: int = 0  # append counter of the last record written to it


def _frame(payload: bytes) -> bytes:
    length = _LENGTH.pack(len(payload))
    return _FRAME.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


class WAL:
    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 1 << 30, segment_bytes: int = 64 << 20) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the write-ahead log directory {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StoreError(
                f"the write-ahead log {self.directory} is in use by another process "
                "(each trifle-otel serve needs its own home directory)"
            ) from None
        self._lock = threading.Lock()  # segments, sizes, writes
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._written = 0  # records written (appended to a file), counter
        self._synced = 0  # records known durable
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._retired: list[_Segment] = []  # rotated segments whose fd a sync may still need
        self._total = 0
        self._closed = False
        self._failed: str | None = None  # a sync failed: the log refuses appends from then on
        self.counters = {"appends": 0, "syncs": 0, "torn_records": 0, "refused": 0, "released": 0}
        for path in sorted(self.directory.iterdir()):
            match = _NAME.match(path.name)
            if not match:
                continue
            size = path.stat().st_size
            if size <= len(SEGMENT_HEADER):  # created, never written: nothing to replay
                path.unlink(missing_ok=True)
                continue
            seq = int(match.group(1))
            self._segments[seq] = _Segment(seq, path, size, size)
            self._total += size
        self._next_seq = max(self._segments, default=0) + 1

    # -- appending -------------------------------------------------------------------------

    def append(self, payload: bytes) -> Position:
        """Write one record; returns once it is durable.  Raises :class:`WALFull`."""
        return self._append([payload], bounded=True)[0]

    def append_many(self, payloads: Iterable[bytes], *, bounded: bool = True) -> list[Position]:
        """Write several records with one sync (all or none, as far as the bound goes).
        ``bounded=False`` writes past ``max_bytes``: for a checkpoint's record of what it
        carries forward, written just before the segments it replaces are deleted."""
        return self._append(list(payloads), bounded=bounded)

    def _append(self, payloads: list[bytes], bounded: bool) -> list[Position]:
        frames = []
        for payload in payloads:
            if len(payload) > MAX_RECORD:
                raise ValueError(f"a write-ahead log record is limited to {MAX_RECORD} bytes")
            frames.append(_frame(payload))
        needed = sum(map(len, frames))
        positions = []
        with self._lock:
            self._check_open()
            if bounded and self._total + needed > self.max_bytes:
                self.counters["refused"] += 1
                raise WALFull(
                    f"the write-ahead log {self.directory} is full ({self._total:,} of {self.max_bytes:,} bytes, "
                    f"{needed:,} more needed); it drains as received spans are stored (receivers.wal_max_bytes)"
                )
            for frame in frames:
                segment = self._current
                if segment is None or (segment.size + len(frame) > self.segment_bytes and segment.size > len(SEGMENT_HEADER)):
                    segment = self._rotate_locked()
                positions.append(Position(segment.seq, segment.size))
                append_whole(segment.fd, frame, segment.size, f"the write-ahead log {segment.path}")  # type: ignore[arg-type]
                segment.size += len(frame)
                self._total += len(frame)
                self._written += 1
                segment.last_record = self._written
            target = self._written
            self.counters["appends"] += len(frames)
        self._sync_until(target)
        return positions

    def _sync_until(self, target: int) -> None:
        """Group commit: return once record ``target`` is durable, syncing as the leader
        when no sync is running; a sync covers everything written before it starts."""
        with self._sync_cond:
            while self._synced < target:
                if self._failed:
                    raise StoreError(self._failed)
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                break
            else:
                return
        error: BaseException | None = None
        try:
            with self._lock:
                upto = self._written
                pending = [s for s in (*self._retired, self._current) if s is not None and s.synced < s.size]
                sizes = [(s, s.size) for s in pending]
            for segment, size in sizes:
                _sync(segment.fd)  # type: ignore[arg-type]
                segment.synced = size
            self.counters["syncs"] += 1
            with self._lock:
                for segment in [s for s in self._retired if s.synced >= s.size]:
                    self._retired.remove(segment)
                    os.close(segment.fd)  # type: ignore[arg-type]
                    segment.fd = None
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after waking the others
            error = exc
        finally:
            with self._sync_cond:
                if error is None:
                    self._synced = max(self._synced, upto)
                elif isinstance(error, OSError):
                    # After a failed fsync the kernel may have dropped the dirty pages, and a
                    # second fsync could report success for data that is gone: stop here.
                    self._failed = (
                        f"the write-ahead log {self.directory} could not sync to disk ({error.strerror or error}); "
                        "it takes no more records: restart the sidecar once the disk is fixed"
                    )
                self._syncing = False
                self._sync_cond.notify_all()
        if error is not None:
            if self._failed:
                raise StoreError(self._failed) from None
            raise error

    def _rotate_locked(self) -> _Segment:
        if self._current is not None:
            self._retired.append(self._current)
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"wal-{seq:016d}.log"
        fd = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            _write_all(fd, SEGMENT_HEADER)
            _sync(fd)
            _sync_directory(self.directory)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
                path.unlink(missing_ok=True)
            raise StoreError(f"cannot start write-ahead log segment {path}: {exc.strerror}") from None
        segment = _Segment(seq, path, len(SEGMENT_HEADER), len(SEGMENT_HEADER), fd)
        self._segments[seq] = segment
        self._current = segment
        self._total += len(SEGMENT_HEADER)
        return segment

    def rotate(self) -> int | None:
        """Start a new segment for the next append; returns the one that was current."""
        with self._lock:
            self._check_open()
            previous = self._current
            if previous is not None:
                self._retired.append(previous)
                self._current = None
            return previous.seq if previous is not None else None

    # -- reading and trimming ------------------------------------------------------------------

    def replay(self) -> Iterator[Record]:
        """Every durable record, oldest first.  Torn or corrupt data ends its segment's
        reading and is counted (``stats()['torn_records']``), never raised."""
        with self._lock:
            segments = sorted(self._segments.values(), key=lambda s: s.seq)
        for segment in segments:
            yield from self._read_segment(segment)

    def _read_segment(self, segment: _Segment) -> Iterator[Record]:
        limit = segment.synced
        try:
            handle = open(segment.path, "rb")
        except FileNotFoundError:
            return  # released meanwhile
        with handle:
            if handle.read(len(SEGMENT_HEADER)) != SEGMENT_HEADER:
                self._torn(segment, len(SEGMENT_HEADER) if segment.size else 0, "not a write-ahead log segment")
                return
            offset = len(SEGMENT_HEADER)
            while offset < limit:
                header = handle.read(_FRAME.size)
                if len(header) < _FRAME.size:
                    self._torn(segment, offset, "a record header is cut short")
                    return
                length, crc = _FRAME.unpack(header)
                if offset + _FRAME.size + length > limit:
                    self._torn(segment, offset, "a record is cut short")
                    return
                payload = handle.read(length)
                if len(payload) < length or zlib.crc32(payload, zlib.crc32(header[:4])) != crc:
                    self._torn(segment, offset, "a record fails its checksum")
                    return
                yield Record(Position(segment.seq, offset), payload)
                offset += _FRAME.size + length

    def _torn(self, segment: _Segment, offset: int, why: str) -> None:
        self.counters["torn_records"] += 1
        logger.warning("write-ahead log %s: %s at offset %d; the rest of that segment is ignored", segment.path, why, offset)

    def release(self, segment: int) -> None:
        """Delete a segment whose records are all stored (the current one is rotated first)."""
        with self._lock:
            info = self._segments.get(segment)
            if info is None:
                return
            if info is self._current:
                self._retired.append(info)
                self._current = None
            del self._segments[segment]
            self._total -= info.size
            self.counters["released"] += 1
            info.path.unlink(missing_ok=True)

    def carry_forward(self, segment: int, payloads: Iterable[bytes]) -> list[Position]:
        """Copy the records still needed from ``segment`` into the current segment, durably,
        then delete ``segment``.  Allowed past ``max_bytes``: the delete frees more."""
        with self._lock:
            if self._current is not None and self._current.seq == segment:
                self._retired.append(self._current)
                self._current = None
        positions = self._append(list(payloads), bounded=False)
        self.release(segment)
        return positions

    # -- inspection ------------------------------------------------------------------------

    def segments(self) -> list[SegmentInfo]:
        with self._lock:
            current = self._current.seq if self._current is not None else None
            return [SegmentInfo(s.seq, s.size, s.seq == current) for s in sorted(self._segments.values(), key=lambda s: s.seq)]

    @property
    def bytes(self) -> int:
        return self._total

    def stats(self) -> dict[str, int]:
        """Gauges and counters for metrics: ``bytes``, ``segments``, ``max_bytes``, ``appends``,
        ``syncs`` (fewer than appends when concurrent appends share them), ``torn_records``,
        ``refused`` (appends refused as full), ``released`` (segments deleted)."""
        with self._lock:
            return {"bytes": self._total, "segments": len(self._segments), "max_bytes": self.max_bytes, **self.counters}

    def close(self) -> None:
        """Close the files and unlock the directory (waits for a running sync)."""
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                for segment in (*self._retired, self._current):
                    if segment is not None and segment.fd is not None:
                        if segment.synced < segment.size:
                            try:
                                _sync(segment.fd)
                            except OSError:
                                pass  # nothing was acknowledged past the last good sync
                        os.close(segment.fd)
                        segment.fd = None
                self._retired.clear()
                self._current = None
                os.close(self._lock_fd)

    def __enter__(self) -> "WAL":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the write-ahead log {self.directory} is closed")
        if self._failed:
            raise StoreError(self._failed)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def append_whole(fd: int, data: bytes, size: int, what: str) -> None:
    """Append a record to a file of ``size`` bytes, or leave none of it behind (a full
    disk): the file is cut back to ``size`` and a :class:`StoreError` names ``what``."""
    try:
        _write_all(fd, data)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise StoreError(f"cannot write to {what}: {exc.strerror}") from None


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
