"""Intake: the bounded queue between ingest and the worker.

Ingest (the span processor on application threads, the exporter, the OTLP receivers) only
appends here: ended spans to ``queue``, and (the processor in live mode) spans as they start
to ``started``, so a running job's record can show the steps it is in; when the queue is full, new items are dropped and counted, so the host
application never waits on the bridge.  The worker is woken once a batch worth moving has
gathered (``wake_at``), not per span: every wake-up costs it a wait for the interpreter
lock behind a busy application thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Sequence

START = "start"  # item ``(START, span)``: a local root has started (live mode)


class Intake:
    __slots__ = ("queue", "started", "max_items", "wake_at", "wake", "dropped", "starts_dropped", "closed", "_lock")

    def __init__(self, max_items: int, wake_at: int) -> None:
        self.queue: deque = deque()
        self.started: deque = deque()  # spans as they started (live mode), in start order
        self.starts_dropped = 0
        self.max_items = max_items
        self.wake_at = max(1, min(wake_at, max_items // 4))
        self.wake = threading.Event()
        self.dropped = 0
        self.closed = False
        self._lock = threading.Lock()  # several application threads may drop at once

    def count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def count_start_dropped(self) -> None:
        with self._lock:
            self.starts_dropped += 1

    def submit(self, item: Any) -> bool:
        """Append one item without blocking; False (and counted as dropped) when full."""
        queue = self.queue
        if len(queue) >= self.max_items or self.closed:
            self.count_dropped()
            return False
        queue.append(item)
        if len(queue) >= self.wake_at:
            self.wake.set()
        return True

    def submit_many(self, items: Sequence[Any]) -> int:
        """Append what fits; returns how many were taken (the rest are counted as dropped)."""
        room = 0 if self.closed else max(self.max_items - len(self.queue), 0)
        if room < len(items):
            self.count_dropped(len(items) - room)
            items = items[:room]
        self.queue.extend(items)
        if len(self.queue) >= self.wake_at:
            self.wake.set()
        return len(items)

    def put_many(self, items: Sequence[Any]) -> None:
        """Append all of them, past the bound: for an ingest path that reserved the room
        before it acknowledged them (the sidecar), which must never drop."""
        self.queue.extend(items)
        if len(self.queue) >= self.wake_at:
            self.wake.set()

    def take(self) -> tuple[list[Any], list[Any]]:
        """(ended, started): everything queued now, oldest first (worker only).

        Ended spans are taken first: a span's start is appended before its end, so every
        start whose end is in this batch is in it too, and is handled first."""
        ended = _pop_all(self.queue)
        return ended, _pop_all(self.started)

    def __len__(self) -> int:
        return len(self.queue)


def _pop_all(queue: deque) -> list[Any]:
    pop = queue.popleft
    return [pop() for _ in range(len(queue))]
