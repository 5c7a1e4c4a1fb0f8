"""Writing stage: translated documents to the trace stores, retried while they refuse.

Documents gather for ``interval`` seconds (or ``batch`` documents), then go to the sink in
one call: one data batch, then one index batch.  Each store call costs the worker a wait for
the interpreter lock behind a busy application thread, so it writes often enough to keep
records fresh, and seldom enough that those waits stay a small share of its time.  Documents the stores refused wait in a bounded retry buffer and are
retried with backoff; past the bound the oldest are spilled to disk, and so is whatever is
still unwritten at shutdown.  Nothing is spilled while the stores take writes, however
large a cycle is.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from ..errors import TrifleError
from ..sinks import TraceSink
from ..translate import Document
from .counters import PipelineCounters
from .spill import Spill

logger = logging.getLogger("trifle_otel")

MAX_BACKOFF = 30.0


class DocumentWriter:
    def __init__(
        self,
        open_sink: Callable[[], TraceSink],
        spill: Spill,
        retry_limit: int,
        counters: PipelineCounters,
        *,
        interval: float = 0.0,
        batch: int = 5_000,
        background: bool = False,
    ) -> None:
        """``background``: the sink writes in another process (``begin``): a batch goes as
        soon as the one before it is written, not every ``interval``."""
        self.background = background
        self.open_sink = open_sink
        self.interval = interval
        self.batch = batch
        self.queued: list[Document] = []  # finished, not tried yet
        self.queued_live: dict[str, Document] = {}  # the latest running record of each execution
        self.next_write = 0.0
        self.spill = spill
        self.retry_limit = retry_limit
        self.counters = counters
        self.retry: "OrderedDict[str, Document]" = OrderedDict()
        self.live_written: set[str] = set()  # references with a running record in the store
        self.undiscarded: dict[str, Document] = {}  # ignored executions whose running record is still there
        self.retry_at = 0.0
        self._backoff = 0.5
        self._last_error_log = 0.0
        self.last_error = ""  # why the last write failed ("" once one succeeds)
        self.in_flight = 0  # finished documents in the store call under way (read by other threads)
        self._pending: tuple[Any, list[Document], list[Document]] | None = None  # (handle, finished, live)

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self.retry_at

    @property
    def waiting(self) -> int:
        """Documents not in the stores yet (queued, being written, or waiting for retry)."""
        return len(self.queued) + len(self.retry) + self.in_flight

    def queue(self, finished: list[Document], live: list[Document]) -> None:
        """Queue a cycle's documents, in cycle order: an execution's finished document
        replaces the running record queued for it in an earlier cycle."""
        for doc in finished:
            self.queued_live.pop(doc.reference, None)
        self.queued.extend(finished)
        for doc in live:
            self.queued_live[doc.reference] = doc

    @property
    def pending(self) -> bool:
        """A batch is with a sink that writes in the background (see ``store_process``)."""
        return self._pending is not None

    def write(self, finished: list[Document], live: list[Document], *, force: bool = False, settle: bool = False) -> None:
        """Queue these documents; write what is queued (and what waits for retry) when it is
        time, or now with ``force``.

        In the background (a sink with ``begin``, writing in another process) a batch is
        handed over and this returns at once; a later call takes the answer.  It waits for
        that answer only when forced, when a full batch is queued behind it (so memory stays
        bounded), or with ``settle`` (the caller has nothing else to do)."""
        self.queue(finished, live)
        if self._pending is not None:
            if not (force or settle) and len(self.queued) < self.batch and not self._pending[0].done():
                return
            self.complete()
        now = time.monotonic()
        if not force and now < self.next_write and len(self.queued) < self.batch and not self.background:
            return
        self.next_write = now + self.interval
        finished, self.queued = self.queued, []
        live, self.queued_live = list(self.queued_live.values()), {}
        for doc in finished:
            self.live_written.discard(doc.reference)
        if self.retry and (force or not self.backing_off):
            for doc in finished:
                self.retry[doc.reference] = doc
                self.retry.move_to_end(doc.reference)
            finished = list(self.retry.values())
            self.retry.clear()
        elif self.backing_off and not force:
            self._keep(finished)
            return
        if not finished and not live:
            return
        self.in_flight = len(finished)
        try:
            sink = self.open_sink()
            begin = getattr(sink, "begin", None) if self.background and not force else None
            if begin is not None:
                self._pending = (begin(finished + live), finished, live)
                return
            failed = sink.write(finished + live)
        except Exception as exc:
            self.in_flight = 0
            self._not_written(exc, finished)
            return
        self.in_flight = 0
        self._written(finished, live, failed)

    def complete(self) -> None:
        """Wait for the batch in the background write, and take its answer."""
        if self._pending is None:
            return
        pending, finished, live = self._pending
        self._pending = None
        try:
            failed = pending.result()
        except Exception as exc:
            self._not_written(exc, finished)
            return
        finally:
            self.in_flight = 0
        self._written(finished, live, failed)

    def _not_written(self, exc: Exception, finished: list[Document]) -> None:
        self._failed(exc)
        self._keep(finished)
        # Its traceback holds the store call's frames (and, from a concurrent store, every
        # failed request's): a cycle the garbage collector would free late.  Drop it now:
        # a long outage retries many times.
        exc.__traceback__ = None

    def _written(self, finished: list[Document], live: list[Document], failed: list[Document]) -> None:
        self._backoff = 0.5
        self.retry_at = 0.0
        self.last_error = ""
        if self.undiscarded:
            self._discard_now(self.open_sink())
        failed_refs = {d.reference for d in failed}
        ok_finished = [d for d in finished if d.reference not in failed_refs]
        self.counters.executions_written += len(ok_finished)
        for doc in live:
            if doc.reference not in failed_refs:
                self.counters.live_writes += 1
                self.live_written.add(doc.reference)
        if failed_refs:
            self.counters.write_errors += 1
            self.last_error = "the data store refused some executions' data"
            self._keep([d for d in finished if d.reference in failed_refs])

    def _keep(self, documents: list[Document]) -> None:
        """Hold documents the stores did not take; past the bound, the oldest go to disk."""
        for doc in documents:
            self.retry[doc.reference] = doc
            self.retry.move_to_end(doc.reference)
        overflow = len(self.retry) - self.retry_limit
        if overflow > 0:
            oldest = [self.retry.popitem(last=False)[1] for _ in range(overflow)]
            if self.spill.save(oldest):
                self.counters.documents_spilled += len(oldest)
            else:
                self.counters.documents_dropped += len(oldest)

    def _failed(self, exc: Exception) -> None:
        self.counters.write_errors += 1
        self.last_error = str(exc) if isinstance(exc, TrifleError) else repr(exc)
        now = time.monotonic()
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        if now - self._last_error_log > 60:
            self._last_error_log = now
            message = str(exc) if isinstance(exc, TrifleError) else repr(exc)
            logger.warning(
                "trifle-otel cannot write traces (%s); %d executions wait for retry, %d dropped so far",
                message,
                len(self.retry),
                self.counters.documents_dropped,
            )

    def failed_now(self) -> None:
        """Another stage found the stores down: back off before the next attempt."""
        self.retry_at = time.monotonic() + self._backoff

    def discard(self, sink: TraceSink | None, doc: Document) -> None:
        """An execution turned out to be ignored: remove the running record live mode wrote
        (or drop the one still waiting to be written)."""
        self.queued_live.pop(doc.reference, None)
        if doc.reference not in self.live_written:
            return
        self.undiscarded[doc.reference] = doc
        self._discard_now(sink)

    def _discard_now(self, sink: TraceSink | None) -> None:
        """Remove the running records of ignored executions; those the stores refused stay
        listed and are tried again with the next write (a record left ``running`` would
        be reported stuck for ever)."""
        if not self.undiscarded or sink is None:
            return
        documents = list(self.undiscarded.values())
        try:
            sink.discard(documents)
        except Exception as exc:
            self.counters.write_errors += 1
            logger.debug("cannot discard ignored executions yet: %s", exc)
            return
        for doc in documents:
            self.undiscarded.pop(doc.reference, None)
            self.live_written.discard(doc.reference)

    def retract(self, sink: TraceSink | None, reference: str) -> None:
        """Remove a running record that turned out to stand for no execution (the sidecar
        made it under a step's id before the step showed the real root)."""
        self.queued_live.pop(reference, None)
        stub = Document({"reference": reference, "key": "_", "retention": 0}, [], [])
        self.discard(sink, stub)

    def take_all(self) -> list[Document]:
        """What still waits (at shutdown, to spill)."""
        self.complete()
        documents = [*self.retry.values(), *self.queued]
        self.retry.clear()
        self.queued = []
        self.queued_live = {}
        return documents
