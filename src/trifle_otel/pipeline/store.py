"""Storing stage, on a thread of its own: documents and stats to the stores, retry, replay of
spilled files, purge of expired executions, and the last writes at shutdown.

Why a thread: every store call gives up the interpreter lock (SQLite, sockets, files), and
getting it back behind a busy application thread can take a whole switch interval.  Here
those waits delay only the writes; the worker thread keeps assembling and translating.
The worker hands over each cycle's documents; a flush (``sync``) waits for this thread to
write everything handed over so far.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from ..sinks import TraceSink
from ..stats.sink import ExecutionStats
from ..translate import Document
from .counters import PipelineCounters
from .replay import replay_spilled
from .spill import Spill
from .writer import DocumentWriter

logger = logging.getLogger("trifle_otel")

PURGE_INTERVAL = 600.0  # seconds between removals of expired executions
POLL_INTERVAL = 0.2


class ExpiredPurge:
    """Every ten minutes, remove executions past their retention where the stores do not
    expire them by themselves (the embedded store; MongoDB's TTL index and S3's lifecycle
    rules do)."""

    def __init__(self, counters: PipelineCounters) -> None:
        self.counters = counters
        self.next_at = 0.0

    def run(self, sink: TraceSink | None, *, busy: bool) -> None:
        now = time.monotonic()
        if now < self.next_at or sink is None or busy:
            return
        self.next_at = now + PURGE_INTERVAL
        try:
            self.counters.executions_expired += sink.purge_expired(datetime.now(timezone.utc))
        except Exception as exc:
            logger.warning("trifle-otel cannot remove expired executions: %s", exc)


class _Sync:
    __slots__ = ("final", "event", "ok")

    def __init__(self, final: bool) -> None:
        self.final = final
        self.event = threading.Event()
        self.ok = False


class StoreStage:
    def __init__(
        self,
        writer: DocumentWriter,
        stats: ExecutionStats,
        spill: Spill,
        open_sink: Callable[[], TraceSink],
        current_sink: Callable[[], TraceSink | None],
        counters: PipelineCounters,
        *,
        replay_batch: int,
        batch: int = 5_000,
    ) -> None:
        self.writer = writer
        self.stats = stats
        self.spill = spill
        self.open_sink = open_sink
        self.current_sink = current_sink
        self.counters = counters
        self.replay_batch = replay_batch
        self.batch = batch
        self._handed: deque[tuple[list[Document], list[Document], list[Document]]] = deque()
        self._handed_count = 0
        self._syncs: deque[_Sync] = deque()
        self.final_requested = False
        self._wake = threading.Event()
        self.purge = ExpiredPurge(counters)
        self._thread = threading.Thread(target=self._run, name="trifle-otel-store", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- worker side ------------------------------------------------------------------

    def hand(self, finished: list[Document], live: list[Document], ignored: list[Document]) -> None:
        """This cycle's documents: finished ones, running records, ignored executions."""
        if finished or live or ignored:
            self._handed.append((finished, live, ignored))
            self._handed_count += len(finished)
            if self._handed_count >= self.batch:
                self._wake.set()

    def sync(self, *, final: bool = False, timeout: float | None = None) -> bool:
        """Write everything handed over so far (and the stats); True when it is all in the
        stores.  ``final``: then spill what the stores did not take and close them."""
        if not self._thread.is_alive() or self.final_requested:
            return False
        if final:
            self.final_requested = True  # (one final round: after it the thread ends)
        request = _Sync(final)
        self._syncs.append(request)
        self._wake.set()
        if not request.event.wait(timeout):
            return False
        return request.ok

    # -- store thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()
            syncs = [self._syncs.popleft() for _ in range(len(self._syncs))]
            final = any(s.final for s in syncs)
            ok = False
            try:
                ok = self._round(force=bool(syncs), final=final)
            except Exception:  # never let the thread die: count and go on
                self.counters.processor_errors += 1
                logger.exception("trifle-otel store cycle failed")
            for request in syncs:
                request.ok = ok
                request.event.set()
            if final:
                self._close()
                while self._syncs:
                    self._syncs.popleft().event.set()
                return

    def _round(self, *, force: bool, final: bool) -> bool:
        writer = self.writer
        for _ in range(len(self._handed)):
            done, running, ignored = self._handed.popleft()
            writer.queue(done, running)
            for doc in ignored:
                writer.discard(self.current_sink(), doc)
        self._handed_count = 0
        if writer.queued or writer.queued_live or (writer.retry and (force or not writer.backing_off)):
            writer.write([], [], force=force)
        if force:
            self.stats.flush()
        else:
            self.stats.flush_if_due()
        if final:
            self._spill_remaining()
            return False
        replay_spilled(
            self.spill, self.open_sink, writer, self.stats, self.counters,
            budget=5.0 if force else 0.5, batch=self.replay_batch,
        )
        self._purge_expired()
        if writer.waiting or self.stats.buffer.pending:
            return False
        return not force or not self.spill.pending()  # (only a sync asks for the answer)

    def _purge_expired(self) -> None:
        self.purge.run(self.current_sink(), busy=bool(self.writer.retry))

    def _spill_remaining(self) -> None:
        """At shutdown, what the stores did not take goes to the spill directory."""
        buffer = self.stats.buffer
        inc, sets = buffer.take()
        documents = self.writer.take_all()
        if not documents and not inc and not sets:
            return
        if self.spill.save(documents, inc, sets):
            self.counters.documents_spilled += len(documents)
            buffer.counters.spilled += len(inc) + len(sets)
        else:
            self.counters.documents_dropped += len(documents)
            buffer.counters.dropped += len(inc) + len(sets)

    def _close(self) -> None:
        self.stats.close()
        sink = self.current_sink()
        if sink is not None:
            try:
                sink.close()
            except Exception:
                pass
