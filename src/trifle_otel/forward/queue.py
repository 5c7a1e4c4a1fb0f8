"""One forward target's queue on disk: bounded, in order, kept across restarts.

The receivers append each accepted request here (one ``write`` to a file, no network, no
sync: a dead backend never slows ingest) and the target's sender reads it in order,
marking each request done once the backend took it or refused it for good.  What a
backend outage holds back waits on disk, not in memory, and a restart of the sidecar
carries on where the last delivery ended.

Layout: ``<dir>/q-<sequence>.log`` segments, each an 8-byte header then framed records
``[payload length: u32 LE][CRC32 of spans + payload: u32 LE][spans: u32 LE][payload]``,
and ``<dir>/cursor``: the position of the first request not yet delivered.  A new segment is started at every open (nothing is appended after a
tail a crash may have torn) and when the current one reaches ``segment_bytes``.

- **Bounded.**  Past ``max_bytes`` the oldest segments are deleted, delivered or not, and
  what they held is counted as dropped (``queue_full``): a long outage costs the oldest
  spans, never the disk or new spans.  The bound therefore acts a segment at a time
  (an eighth of it by default).
- **At least once.**  The cursor is written after the backend answered (a few times a
  second at most), so a crash sends the requests delivered since again; none is lost.  Appends are not synced:
  a killed process loses nothing (the kernel has the pages), a power cut may lose the
  last seconds of the queue — the write-ahead log, synced, still has them for the stores.
- **Bad data never stops the queue.**  A torn or corrupt record ends its segment's
  reading and is counted (``corrupt``).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import StoreError
from ..wal import append_whole

__all__ = ["ForwardQueue", "QueuedRequest"]

logger = logging.getLogger("trifle_otel")

SEGMENT_HEADER = b"TRFLFWQ1"
_FRAME = struct.Struct("<III")  # payload length, CRC32 of (spans + payload), spans
_NAME = re.compile(r"^q-(\d{16})\.log$")
_CURSOR = "cursor"
MAX_SEGMENT_BYTES = 32 << 20


class QueuedRequest(NamedTuple):
    segment: int
    offset: int
    end: int  # offset of the next record
    spans: int
    payload: bytes


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int = len(SEGMENT_HEADER)
    records: int = 0
    spans: int = 0
    fd: int | None = None  # the current segment's append descriptor


class ForwardQueue:
    def __init__(self, directory: str | os.PathLike, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(min(max_bytes // 8, MAX_SEGMENT_BYTES), 64 << 10)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the forward queue directory {self.directory}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._total = 0
        self._closed = False
        # the reader: the first request not yet done, and how much of its segment is done
        self._read_seq = 0
        self._read_offset = len(SEGMENT_HEADER)
        self._read_records = 0
        self._read_spans = 0
        self.dropped = {"queue_full": [0, 0], "corrupt": [0, 0]}  # reason -> [requests, spans]
        self._cursor_dirty = False
        self._cursor_lock = threading.Lock()
        self._next_seq = 1
        self._open()

    # -- opening --------------------------------------------------------------------------

    def _open(self) -> None:
        for path in sorted(self.directory.iterdir()):
            match = _NAME.match(path.name)
            if match:
                segment = _Segment(int(match.group(1)), path)
                self._scan(segment)
                if segment.records == 0:
                    path.unlink(missing_ok=True)
                    continue
                self._segments[segment.seq] = segment
                self._total += segment.size
        cursor = self._read_cursor()
        self._next_seq = max(max(self._segments, default=0), cursor[0] if cursor else 0) + 1
        for seq in [s for s in self._segments if cursor is not None and s < cursor[0]]:
            self._delete(self._segments[seq])  # delivered before the last stop
        oldest = min(self._segments, default=None)
        if oldest is not None:
            self._read_seq = oldest
            if cursor is not None and cursor[0] == oldest:
                self._skip_to(self._segments[oldest], cursor[1])

    def _scan(self, segment: _Segment) -> None:
        """Count a segment's records up to its first torn or corrupt one (its end now)."""
        for request in self._records(segment, len(SEGMENT_HEADER), None):
            segment.records += 1
            segment.spans += request.spans
            segment.size = request.end

    def _skip_to(self, segment: _Segment, offset: int) -> None:
        for request in self._records(segment, len(SEGMENT_HEADER), offset):
            self._read_records += 1
            self._read_spans += request.spans
            self._read_offset = request.end

    def _records(self, segment: _Segment, start: int, stop: int | None):
        """Records of a file from ``start`` (before ``stop``), checked; ends at damage."""
        try:
            handle = open(segment.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            if handle.read(len(SEGMENT_HEADER)) != SEGMENT_HEADER:
                self._count_corrupt(segment, 0, "not a forward queue segment")
                return
            handle.seek(start)
            offset = start
            while stop is None or offset < stop:
                header = handle.read(_FRAME.size)
                if not header:
                    return
                if len(header) < _FRAME.size:
                    self._count_corrupt(segment, offset, "a record header is cut short")
                    return
                length, crc, spans = _FRAME.unpack(header)
                payload = handle.read(length)
                if len(payload) < length or zlib.crc32(payload, zlib.crc32(header[8:])) != crc:
                    self._count_corrupt(segment, offset, "a record is cut short or fails its checksum")
                    return
                end = offset + _FRAME.size + length
                yield QueuedRequest(segment.seq, offset, end, spans, payload)
                offset = end

    def _count_corrupt(self, segment: _Segment, offset: int, why: str) -> None:
        self.dropped["corrupt"][0] += 1
        logger.warning("forward queue %s: %s at offset %d; the rest of that segment is skipped", segment.path, why, offset)

    def _read_cursor(self) -> tuple[int, int] | None:
        try:
            text = (self.directory / _CURSOR).read_text().split()
            return int(text[0]), int(text[1])
        except (OSError, ValueError, IndexError):
            return None

    # -- appending (receiver threads) -------------------------------------------------------

    def put(self, payload: bytes, spans: int = 0) -> None:
        """Append a request.  Past ``max_bytes`` the oldest segments make room."""
        frame = _FRAME.pack(len(payload), zlib.crc32(payload, zlib.crc32(struct.pack("<I", spans))), spans) + payload
        with self._lock:
            if self._closed:
                raise StoreError(f"the forward queue {self.directory} is closed")
            if len(frame) + len(SEGMENT_HEADER) > self.max_bytes:
                self.dropped["queue_full"][0] += 1
                self.dropped["queue_full"][1] += spans
                return
            while self._total + len(frame) > self.max_bytes and self._segments:
                oldest = self._segments[min(self._segments)]
                if oldest is self._current:
                    self._rotate_locked()
                self._drop_locked(oldest)
            segment = self._current
            if segment is None or (segment.size + len(frame) > self.segment_bytes and segment.records):
                segment = self._rotate_locked()
            append_whole(segment.fd, frame, segment.size, f"the forward queue {segment.path}")  # type: ignore[arg-type]
            segment.size += len(frame)
            segment.records += 1
            segment.spans += spans
            self._total += len(frame)
            self._ready.notify_all()

    def _rotate_locked(self) -> _Segment:
        if self._current is not None:
            if self._current.fd is not None:
                os.close(self._current.fd)
                self._current.fd = None
            self._current = None  # (so a failed rotation leaves no segment without a descriptor)
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"q-{seq:016d}.log"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot start forward queue segment {path}: {exc.strerror}") from None
        try:
            append_whole(fd, SEGMENT_HEADER, 0, f"the forward queue {path}")
        except StoreError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = _Segment(seq, path, fd=fd)
        self._segments[seq] = segment
        self._current = segment
        self._total += segment.size
        if len(self._segments) == 1:
            self._reset_reader(seq)
        return segment

    def _drop_locked(self, segment: _Segment) -> None:
        """Delete the oldest segment to make room; what it held undelivered is dropped."""
        records, spans = segment.records, segment.spans
        if segment.seq == self._read_seq:
            records -= self._read_records
            spans -= self._read_spans
        self.dropped["queue_full"][0] += records
        self.dropped["queue_full"][1] += spans
        self._delete(segment)

    def _delete(self, segment: _Segment) -> None:
        self._segments.pop(segment.seq, None)
        self._total -= segment.size
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None
        if segment is self._current:
            self._current = None
        segment.path.unlink(missing_ok=True)
        if segment.seq == self._read_seq or self._read_seq not in self._segments:
            self._reset_reader(min(self._segments, default=self._next_seq))

    def _reset_reader(self, seq: int) -> None:
        self._read_seq = seq
        self._read_offset = len(SEGMENT_HEADER)
        self._read_records = 0
        self._read_spans = 0

    # -- reading (the target's senders) -----------------------------------------------------

    def peek(self, timeout: float | None = None) -> QueuedRequest | None:
        """The first request not yet done, waiting up to ``timeout`` seconds for one."""
        return self.next_after(None, timeout)

    def next_after(self, after: QueuedRequest | None, timeout: float | None = None) -> QueuedRequest | None:
        """The request that follows ``after`` — or the first not yet done, when ``after`` is
        None or gone (dropped at the bound) — waiting up to ``timeout`` seconds for one to
        be put; None when there is none (or the queue closed)."""
        with self._lock:
            if after is None or not self._holds_locked(after):
                seq, offset = self._read_seq, self._read_offset
            else:
                seq, offset = after.segment, after.end
            while not self._closed:
                segment = self._segments.get(seq)
                if segment is not None and offset < segment.size:
                    break
                if segment is None or segment is not self._current:
                    later = [n for n in self._segments if n > seq]
                    if later:
                        seq, offset = min(later), len(SEGMENT_HEADER)
                        continue
                if not self._ready.wait(timeout):
                    return None
                if timeout is not None:
                    timeout = 0
                if seq < self._read_seq or (seq == self._read_seq and offset < self._read_offset):
                    seq, offset = self._read_seq, self._read_offset  # dropped at the bound meanwhile
            else:
                return None
            end = segment.size
        records = self._records(segment, offset, end)
        try:
            request = next(records, None)
        finally:
            records.close()
        if request is None:
            self._cut_at_damage(segment, offset)
            return self.next_after(after, 0)
        return request

    def _cut_at_damage(self, segment: _Segment, offset: int) -> None:
        """A damaged record: its segment ends there (what followed is counted as dropped),
        and new requests go to a new segment."""
        with self._lock:
            if segment.seq not in self._segments or offset >= segment.size:
                return
            if segment is self._current:
                self._rotate_locked()
            before_records, before_spans = segment.records, segment.spans
            segment.records = segment.spans = 0
            kept = len(SEGMENT_HEADER)
            for request in self._records(segment, len(SEGMENT_HEADER), offset):
                segment.records += 1
                segment.spans += request.spans
                kept = request.end
            self._total -= segment.size - kept
            segment.size = kept
            lost = self.dropped["corrupt"]
            lost[0] += max(before_records - segment.records - 1, 0)  # (the damaged one is counted already)
            lost[1] += max(before_spans - segment.spans, 0)
            self._settle_head_locked()

    def holds(self, request: QueuedRequest) -> bool:
        """Whether a request is still queued (not done, not dropped at the bound)."""
        with self._lock:
            return self._holds_locked(request)

    def _holds_locked(self, request: QueuedRequest) -> bool:
        if request.segment not in self._segments:
            return False
        return request.segment > self._read_seq or (request.segment == self._read_seq and request.offset >= self._read_offset)

    def done(self, request: QueuedRequest, delivered: bool = True) -> None:
        """The backend took the request (``delivered``) or refused it for good: move past
        it.  Requests are done in queue order.  One dropped at the bound while it was being
        sent, then delivered, is no longer counted as dropped."""
        with self._lock:
            if not self._holds_locked(request):
                if delivered and request.segment not in self._segments:
                    self.dropped["queue_full"][0] -= 1
                    self.dropped["queue_full"][1] -= request.spans
                return
            if (request.segment, request.offset) != (self._read_seq, self._read_offset):
                raise ValueError("forward queue requests must be done in order")
            self._read_offset = request.end
            self._read_records += 1
            self._read_spans += request.spans
            self._cursor_dirty = True
            self._settle_head_locked()

    def _settle_head_locked(self) -> None:
        """Delete the head's segment once all of it is done (unless it is still written)."""
        while True:
            segment = self._segments.get(self._read_seq)
            if segment is None:
                if self._segments and min(self._segments) > self._read_seq:
                    self._reset_reader(min(self._segments))
                    continue
                return
            if self._read_offset < segment.size or segment is self._current:
                return
            self._delete(segment)

    def flush_cursor(self) -> None:
        """Write where delivery stands (after a restart, it goes on from there: what was
        delivered since the last write is sent again — at least once)."""
        with self._lock:
            if not self._cursor_dirty:
                return
            self._cursor_dirty = False
            text = f"{self._read_seq} {self._read_offset}\n"
        with self._cursor_lock:
            path = self.directory / _CURSOR
            tmp = self.directory / (_CURSOR + ".tmp")
            try:
                tmp.write_text(text)
                os.replace(tmp, path)
            except OSError as exc:
                logger.warning("forward queue %s: cannot write its cursor: %s", self.directory, exc.strerror)

    # -- inspection and closing ---------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._total

    def pending(self) -> tuple[int, int]:
        """(requests, spans) not yet done."""
        with self._lock:
            requests = sum(s.records for s in self._segments.values())
            spans = sum(s.spans for s in self._segments.values())
            if self._read_seq in self._segments:
                requests -= self._read_records
                spans -= self._read_spans
            return requests, spans

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cursor_dirty = True
            for segment in self._segments.values():
                if segment.fd is not None:
                    os.close(segment.fd)
                    segment.fd = None
            self._ready.notify_all()
        self.flush_cursor()

