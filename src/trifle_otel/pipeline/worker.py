"""The pipeline: one background worker moving batches through the stages after ingest.

intake (bounded queue) → assembly (executions under local roots) → translation (documents)
→ stats (rules and the default stat, into the stats buffer) → writing (trace stores, retry,
spill) → replay (spilled files) → purge (expired executions).  Each stage lives in its own
module; this loop only hands batches from one to the next.  Every ingest path (processor,
exporter, OTLP receivers) feeds the same intake, so nothing after it is built twice.

The worker shares the interpreter lock with the application: each time it gives the lock up
(a blocking call, a file or socket operation) it may wait a whole switch interval to get it
back from a busy application thread.  So it wakes for batches, not spans, and writes a
cycle's documents in a few store calls.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict
from typing import Any, Callable, Protocol, Sequence

from .. import lifecycle
from ..assembly import Assembler
from ..config import Config
from ..model import Execution, Span, reference_for
from ..sinks import TraceSink, encode_parts
from ..stats.sink import ExecutionStats
from ..stores import check_urls
from ..translate import Document, Translator
from .counters import PipelineCounters
from .intake import Intake
from .live import LiveRecords
from .open_assembly import LateExecution, OpenAssembler
from .running import RunningRecords
from .store import ExpiredPurge, StoreStage
from .store_process import ProcessSink, open_trace_sink
from .spill import Spill
from .writer import DocumentWriter

logger = logging.getLogger("trifle_otel")

CHUNK = 256  # spans the worker takes through assembly, translation and stats at a time
WRITE_CHUNK = 1_000  # finished executions a cycle translates before handing them on to be written
POLL_INTERVAL = 0.1  # seconds the worker sleeps when nothing wakes it (new live roots, grace)
FLUSH_RETRY = 2.0  # seconds a flush tries again while the stores refuse

_pipelines: "weakref.WeakSet[Pipeline]" = weakref.WeakSet()
# Store connections a forked child inherited: kept referenced, never closed or used there
# (closing an inherited SQLite connection could checkpoint the parent's WAL under it).
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    for pipeline in list(_pipelines):
        pipeline._reinit_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _FlushRequest:
    __slots__ = ("_event", "ok")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.ok = False

    def done(self, ok: bool) -> None:
        self.ok = ok
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout) and self.ok


class Durability(Protocol):
    """What makes the pipeline's input durable (the sidecar's write-ahead log), as the
    worker sees it.  With one, the worker writes stats only in checkpoints: ``cut`` takes
    everything received up to a point in the log, the worker writes every execution
    finished by then, and ``commit`` carries the spans still open forward and writes the
    stats together with the checkpoint's mark, after which the log before the cut goes."""

    def due(self) -> bool: ...

    def cut(self, intake: Intake) -> tuple[list[Any], list[Any]]: ...

    def commit(self, carried: list[Span], stats: ExecutionStats) -> bool: ...

    def abandon(self, reason: str) -> None: ...


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        convert: Callable[[Any], Span] | None = None,
        starts: Any = None,
        sink_factory: Callable[[], TraceSink] | None = None,
        stats: ExecutionStats | None = None,
        wake_at: int = 2048,
        open_ended: bool = False,
        durability: Durability | None = None,
        store_process: bool = False,
    ) -> None:
        """``open_ended``: spans come with no end signal (OTLP): assembled by
        :class:`OpenAssembler`, running records from what has arrived.  ``durability``: the
        input is durable elsewhere (the write-ahead log): the worker writes documents itself
        and stats only in the log's checkpoints, and nothing is spilled (the log holds it).
        ``store_process``: the trace stores are written by a child process
        (:mod:`.store_process`), beside the worker rather than between its cycles."""
        self.config = config
        if config.forward and durability is None:
            logger.warning(
                "trifle-otel: the config's 'forward' targets are used by trifle-otel serve only; in-process, "
                "add an OTLP exporter beside the processor (README: Keep your tracing backend)"
            )
        self._wake_at = wake_at
        self._open_ended = open_ended
        self._durability = durability
        self._convert = convert
        self._starts = starts  # reads spans the processor saw start (ingest/sdk.SDKStarts)
        self._store_process = store_process and sink_factory is None
        self._sink_factory = sink_factory or (self._process_sink if store_process else self._default_sink)
        self._sink: TraceSink | None = None
        if sink_factory is None:
            check_urls(config)  # an unsupported store URL is refused now, not at the first write
        self.translator = Translator(config)
        self._gzip = config.gzip
        # Rules are compiled here, when the configuration loads: a broken rule is refused now.
        self.execution_stats = ExecutionStats(config) if stats is None else stats
        self._init_state()
        _pipelines.add(self)
        lifecycle.register(self, flush="force_flush")
        self._start_worker()

    # -- ingest side (any thread) -------------------------------------------------------

    def submit(self, item: Any) -> bool:
        """Append one intake item (a span, or ``(START, span)``) without blocking."""
        return self.intake.submit(item)

    def submit_many(self, items: Sequence[Any]) -> int:
        return self.intake.submit_many(items)

    def force_flush(self, timeout: float | None = 30.0) -> bool:
        """Write every execution whose root has ended (and the stats they made).

        True when all of it reached the stores within ``timeout``; False when the stores
        refused (it waits for retry, or in the spill directory) or time ran out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_until = time.monotonic() + FLUSH_RETRY
        while True:
            if self.intake.closed or not self._thread.is_alive():
                return False
            request = _FlushRequest()
            self._flush_requests.append(request)  # a deque: no lock (this may run in a signal handler)
            self.intake.wake.set()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if request.wait(left):
                return True
            # A store that refused for a moment (a lock held by another process) gets another
            # try or two; one that stays down answers False without using up the timeout.
            now = time.monotonic()
            if now >= retry_until or (deadline is not None and now + 0.1 >= deadline):
                return False
            time.sleep(0.1)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        if self.intake.closed:
            return
        self.intake.closed = True
        self.intake.wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        _pipelines.discard(self)
        lifecycle.unregister(self)

    def stats(self) -> dict[str, int]:
        self.counters.spans_dropped = self.intake.dropped
        out = asdict(self.counters)
        out.update({f"assembly_{k}": v for k, v in asdict(self.assembler.counters).items()})
        out.update({f"stats_{k}": v for k, v in self.execution_stats.buffer.stats().items()})
        out["live_starts_dropped"] = self.intake.starts_dropped
        out["queued"] = len(self.intake)
        out["retry_buffer"] = len(self.writer.retry)
        return out

    # -- worker ------------------------------------------------------------------------

    def _init_state(self) -> None:
        c = self.config
        self.intake = Intake(c.queue_size, self._wake_at)
        self.counters = PipelineCounters()
        self.assembler: Any
        self.live: Any
        if self._open_ended:
            self.assembler = OpenAssembler(
                grace=c.sidecar_grace, trace_timeout=c.trace_timeout, max_pending_spans=c.max_pending_spans,
                refresh=c.live_interval, release_after=c.stuck_after,
            )
            self.live = RunningRecords(self._open_sink) if c.live else None
        else:
            self.assembler = Assembler(grace=c.grace)
            self.live = LiveRecords(c.live_interval, self._convert, getattr(self._starts, "key", None)) if c.live else None
        self._flush_requests: deque[_FlushRequest] = deque()
        self._more = False  # run the next cycle without waiting
        self.spill = Spill(
            c.resolved_spill_dir(),
            c.spill_max_bytes,
            (c.resolved_index_url(), c.resolved_data_url(), c.resolved_stats_url(), c.stats_mode),
        )
        # With a durable input nothing is spilled: documents wait in memory (the sidecar stops
        # taking requests past ``retry_buffer`` of them) and the log keeps their spans.
        retry_limit = sys.maxsize if self._durability is not None else c.retry_buffer
        # Writes in a child process go a chunk at a time: one being written, one translated.
        # So do the store thread's: while a backlog is translated it writes each chunk as it
        # comes, and what a flush waits for at its end is one chunk's write, not five.
        chunked = self._store_process or self._durability is None
        self.writer = DocumentWriter(self._open_sink, self.spill, retry_limit, self.counters, interval=c.flush_interval,
                                     batch=WRITE_CHUNK if chunked else 5_000, background=self._store_process)
        # With a durable input the worker writes itself: a checkpoint needs its writes done
        # and the stats written with its mark, so no other thread may flush them.
        self.store = None if self._durability is not None else StoreStage(
            self.writer, self.execution_stats, self.spill, self._open_sink, lambda: self._sink, self.counters,
            replay_batch=c.retry_buffer, batch=WRITE_CHUNK,
        )
        self._purge = ExpiredPurge(self.counters)

    def _start_worker(self) -> None:
        if self.store is not None:
            self.store.start()
        self._thread = threading.Thread(target=self._run, name="trifle-otel-worker", daemon=True)
        self._thread.start()

    def _reinit_after_fork(self) -> None:
        """In a forked child: the worker thread and queued items belong to the parent."""
        if self._sink is not None:
            _inherited.append(self._sink)
        self._sink = None  # connections opened by the parent must not be shared
        # Buffered stats belong to the parent, which writes them; locks may be held there.
        _inherited.append(self.execution_stats)
        self.execution_stats = ExecutionStats(self.config, self.execution_stats.rules)
        was_closed = self.intake.closed
        self._init_state()
        self.intake.closed = was_closed
        if not was_closed:
            self._start_worker()

    def _default_sink(self) -> TraceSink:
        return open_trace_sink(self.config)

    def _process_sink(self) -> TraceSink:
        return ProcessSink(self.config)  # type: ignore[return-value]  (the same interface)

    def _open_sink(self) -> TraceSink:
        if self._sink is None:
            self._sink = self._sink_factory()
        return self._sink

    def _run(self) -> None:
        wake = self.intake.wake
        while True:
            if not self._more:
                wake.wait(POLL_INTERVAL)
            self._more = False
            wake.clear()
            stopping = self.intake.closed
            flushes = [self._flush_requests.popleft() for _ in range(len(self._flush_requests))]
            ok = False
            try:
                ok = self._cycle(flush=bool(flushes), final=stopping)
            except Exception:  # never let the worker die: count and go on
                self.counters.processor_errors += 1
                logger.exception("trifle-otel worker cycle failed")
            for request in flushes:
                request.done(ok)
            if stopping:
                if self.store is None:
                    self._close()
                elif not self.store.final_requested:  # the last cycle failed before its final sync
                    self.store.sync(final=True, timeout=60)
                while self._flush_requests:
                    self._flush_requests.popleft().done(False)
                return

    def _cycle(self, *, flush: bool = False, final: bool = False) -> bool:
        """One round; True (for a flush) when everything is in the stores."""
        if self._durability is not None:
            return self._durable_cycle(flush=flush, final=final)
        ended, started = self.intake.take()
        now_ns = time.time_ns()
        finished: list[Document] = []
        ignored: list[Document] = []
        # A few hundred spans at a time, each through to its documents: the spans and
        # executions made from them die young, instead of a whole batch of them outliving
        # the collector's young generations and making it scan the application's heap.
        while True:
            chunk = ended[:CHUNK]
            del ended[:CHUNK]
            self._assemble((chunk, started))
            started = []
            del chunk
            done, skipped = self._finish(self.assembler.collect(ignore_grace=flush, final=final and not ended), now_ns)
            finished += done
            ignored += skipped
            if not ended:
                break
            if len(finished) >= WRITE_CHUNK:
                # A long cycle (a backlog) hands its documents over as it goes: the store
                # thread writes them while this one translates the rest.
                self.store.hand(finished, [], ignored)  # type: ignore[union-attr]
                finished, ignored = [], []
        live = self._live_documents(now_ns, ignored) if self.live is not None and not final else []
        self.store.hand(finished, live, ignored)
        if flush or final:
            return self.store.sync(final=final)  # type: ignore[union-attr]
        return True

    def _durable_cycle(self, *, flush: bool, final: bool) -> bool:
        """One round with a durable input (the sidecar).  Stats are written only by a
        checkpoint, with its mark, so that replaying the log after a crash counts each
        execution once; a checkpoint needs every finished execution in the stores first."""
        durability = self._durability
        assert durability is not None
        checkpoint = flush or final or durability.due()
        self._assemble(durability.cut(self.intake) if checkpoint else self.intake.take())
        now_ns = time.time_ns()
        writer = self.writer
        executions = self.assembler.collect(ignore_grace=flush or final, final=final)
        # While executions keep coming due (a backlog after a burst), the next cycle starts
        # at once rather than after a poll interval.
        self._more = bool(executions)
        finished: list[Document] = []
        ignored: list[Document] = []
        # Into the writer a chunk at a time: when a child process writes the stores, it
        # writes one chunk while this thread translates the next.
        for start in range(0, len(executions), WRITE_CHUNK):
            done, skipped = self._finish(executions[start : start + WRITE_CHUNK], now_ns)
            ignored += skipped
            if start + WRITE_CHUNK < len(executions):
                writer.write(done, [])
            else:
                finished = done
        del executions
        live = self._running_documents(now_ns, ignored)
        for doc in ignored:
            writer.discard(self._sink, doc)
        if (finished or live or writer.queued or writer.queued_live or writer.pending
                or (writer.retry and (checkpoint or not writer.backing_off))):
            failures = self.counters.write_errors
            # (nothing more to translate: wait for the batch in flight and send the rest)
            writer.write(finished, live, force=checkpoint, settle=not len(self.intake))
            if self.counters.write_errors != failures:
                # A failed store call leaves reference cycles (the client library's
                # exceptions and retries): free them while they are young, or a long outage
                # grows memory with every retry until a full collection comes.
                gc.collect(1)
        if not final:
            self._purge.run(self._sink, busy=bool(writer.retry))
        if not checkpoint:
            return False
        if writer.waiting:
            durability.abandon(f"stores unavailable: {writer.last_error or 'executions wait for retry'}")
            return False
        return durability.commit(self.assembler.carry(), self.execution_stats)

    def _running_documents(self, now_ns: int, ignored: list[Document]) -> list[Document]:
        """Open-ended assembly: the running snapshots it made (checked against the index
        once each), and the running records that stood for no execution removed."""
        if self.live is None:  # (live: false) no running records
            self.assembler.running()
            self.assembler.retracted()
            return []
        docs = self._live_documents(now_ns, ignored)
        for trace_id, root_id in self.assembler.retracted():
            self.writer.retract(self._sink, reference_for(trace_id, root_id))
        return docs

    def _assemble(self, taken: tuple[list[Any], list[Any]]) -> None:
        """Intake items into the assembler: starts first (live mode), then ended spans."""
        ended, started = taken
        assembler = self.assembler
        if self._open_ended:  # (OTLP: spans only, taken in one call)
            try:
                assembler.add_many(ended)
            except Exception:
                self.counters.processor_errors += 1
                logger.exception("cannot take %d spans", len(ended))
            return
        add = assembler.add
        convert = self._convert
        live = self.live
        if started and self._starts is not None and live is not None:
            self._take_starts(started)
        opens = live.opens if live is not None else None
        close = live.closed if live is not None else None
        for item in ended:
            try:
                if type(item) is Span:
                    add(item)
                elif type(item) is tuple:  # (START, span): a local root started (neutral ingest)
                    span = item[1]
                    assembler.start(span, None)
                    if live is not None:
                        live.started(span)
                else:
                    if opens:
                        close(item)
                    add(convert(item))  # type: ignore[misc]
            except Exception:
                self.counters.processor_errors += 1
                logger.debug("cannot take a span", exc_info=True)

    def _take_starts(self, started: list[Any]) -> None:
        starts, live, convert = self._starts, self.live, self._convert
        for source in started:
            try:
                kind = starts.kind(source)
                if kind == "step":
                    live.opened(source)  # type: ignore[union-attr]
                elif kind == "root":
                    root = convert(source)  # type: ignore[misc]
                    self.assembler.start(root, source)
                    live.started(root)  # type: ignore[union-attr]
            except Exception:
                self.counters.processor_errors += 1
                logger.debug("cannot take a span start", exc_info=True)

    def _finish(self, executions: list[Execution], now_ns: int) -> tuple[list[Document], list[Document]]:
        """Translate finished executions, feed their stats: (documents to store, ignored)."""
        documents: list[Document] = []
        ignored: list[Document] = []
        for execution in executions:
            doc = self._translate(execution, now_ns)
            if doc is None:
                continue
            self._observe_stats(execution, doc)
            if doc.ignored:
                self.counters.executions_ignored += 1
                ignored.append(doc)
                continue
            documents.append(encode_parts(doc, self._gzip))
        return documents, ignored

    def _live_documents(self, now_ns: int, ignored: list[Document]) -> list[Document]:
        docs = []
        for execution in self.live.due(self.assembler):  # type: ignore[union-attr]
            doc = self._translate(execution, now_ns)
            if doc is None:
                continue
            if doc.ignored:
                ignored.append(doc)
                continue
            docs.append(encode_parts(doc, self._gzip))
        return docs

    def _translate(self, execution: Execution, now_ns: int) -> Document | None:
        try:
            return self.translator.translate(execution, now_ns)
        except Exception:
            self.counters.translation_errors += 1
            logger.exception("cannot translate execution %s", execution.reference)
            return None

    def _observe_stats(self, execution: Execution, doc: Document) -> None:
        if self.execution_stats.enabled:
            try:
                if type(execution) is LateExecution:
                    _observe_late(self.execution_stats, execution, doc)
                else:
                    self.execution_stats.observe(execution, doc)
            except Exception:
                self.counters.processor_errors += 1
                logger.exception("stats rules failed on execution %s", doc.reference)

    # -- the durable (sidecar) path writes on the worker thread ----------------------------

    def _close(self) -> None:
        # Stats are written by checkpoints only: what is left, the log replays next start.
        self.writer.complete()
        for closable in (self.execution_stats.buffer.driver, self._sink):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    pass


def _observe_late(stats: ExecutionStats, execution: LateExecution, doc: Document) -> None:
    """An execution written again with late spans: the rules see the late spans only (the
    others were tracked the first time), and the default execution stat is not tracked
    again (it counts executions, and this one was counted)."""
    if not stats.rules:
        return
    record = doc.record
    ctx = {"state": "ignored" if doc.ignored else record["state"], "key": record["key"]}
    tracks: list = []
    for span in execution.late:
        stats.rules.collect(span, ctx, tracks)
    stats.buffer.track_many(tracks)
