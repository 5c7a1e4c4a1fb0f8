"""The shared path after ingest: intake queue → assembly → translation → sinks.

One background worker thread does everything; ingest (the span processor, the exporter,
the OTLP receivers) only appends to the intake deque, which is bounded: when it is full
new spans are dropped and counted, so the host application never waits on the bridge.
Store failures are retried from a bounded buffer of finished documents; past that bound,
and at shutdown, documents go to the spill directory, replayed once the stores work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from . import lifecycle
from .assembly import Assembler
from .config import Config
from .errors import TrifleError
from .model import Execution, Span
from .sinks import TraceSink
from .spill import Spill
from .stats.sink import ExecutionStats
from .stores import check_urls, open_data, open_index
from .translate import Document, Translator

logger = logging.getLogger("trifle_otel")

PURGE_INTERVAL = 600.0  # seconds between removals of expired executions
START = "start"  # intake item ``(START, span)``: a local root has started (live mode)

@dataclass
class PipelineCounters:
    spans_dropped: int = 0
    processor_errors: int = 0
    executions_written: int = 0
    executions_ignored: int = 0
    live_writes: int = 0
    translation_errors: int = 0
    write_errors: int = 0
    documents_spilled: int = 0
    documents_replayed: int = 0
    documents_dropped: int = 0
    executions_expired: int = 0


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


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        convert: Callable[[Any], Span] | None = None,
        sink_factory: Callable[[], TraceSink] | None = None,
        stats: ExecutionStats | None = None,
        wake_at: int = 512,
    ) -> None:
        self.config = config
        self.intake: deque = deque()
        self.max_queue = config.queue_size
        self.wake_at = min(wake_at, max(1, config.queue_size // 4))
        self.counters = PipelineCounters()
        self._convert = convert
        self._sink_factory = sink_factory or self._default_sink
        self._sink: TraceSink | None = None
        if sink_factory is None:
            check_urls(config)  # an unsupported store URL is refused now, not at the first write
        self.translator = Translator(config)
        # Rules are compiled here, when the configuration loads: a broken rule is refused now.
        self.execution_stats = ExecutionStats(config) if stats is None else stats
        self._init_state()
        _pipelines.add(self)
        lifecycle.register(self, flush="force_flush")
        self._start_worker()

    # -- ingest side (any thread) -------------------------------------------------------

    def count_dropped(self, n: int = 1) -> None:
        with self._count_lock:  # several application threads may drop at once
            self.counters.spans_dropped += n

    def submit(self, item: Any) -> None:
        """Append one intake item without blocking; count it as dropped when full."""
        intake = self.intake
        if len(intake) >= self.max_queue or self._stopped:
            self.count_dropped()
            return
        intake.append(item)
        if len(intake) >= self.wake_at:
            self.wake.set()

    def submit_many(self, spans: Sequence[Any]) -> None:
        room = 0 if self._stopped else self.max_queue - len(self.intake)
        if room < len(spans):
            self.count_dropped(len(spans) - max(room, 0))
            spans = spans[: max(room, 0)]
        self.intake.extend(spans)
        if len(self.intake) >= self.wake_at:
            self.wake.set()

    def force_flush(self, timeout: float | None = 30.0) -> bool:
        """Write every execution whose root has ended (and the stats they made).

        True when all of it reached the stores within ``timeout``; False when the stores
        refused (it waits for retry, or in the spill directory) or time ran out.
        """
        if self._stopped or not self._thread.is_alive():
            return False
        request = _FlushRequest()
        self._flush_requests.append(request)  # a deque: no lock (this may run in a signal handler)
        self.wake.set()
        return request.wait(timeout)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        _pipelines.discard(self)
        lifecycle.unregister(self)

    def stats(self) -> dict[str, int]:
        out = asdict(self.counters)
        out.update({f"assembly_{k}": v for k, v in asdict(self.assembler.counters).items()})
        out.update({f"stats_{k}": v for k, v in self.execution_stats.buffer.stats().items()})
        out["queued"] = len(self.intake)
        out["retry_buffer"] = len(self._retry)
        return out

    # -- worker ------------------------------------------------------------------------

    def _init_state(self) -> None:
        c = self.config
        self.assembler = Assembler(grace=c.grace)
        self.wake = threading.Event()
        self._count_lock = threading.Lock()
        self._flush_requests: deque[_FlushRequest] = deque()
        self._spill = Spill(
            c.resolved_spill_dir(),
            c.spill_max_bytes,
            (c.resolved_index_url(), c.resolved_data_url(), c.resolved_stats_url(), c.stats_mode),
        )
        self._stopped = False
        self._retry: "OrderedDict[str, Document]" = OrderedDict()
        self._retry_at = 0.0
        self._backoff = 0.5
        self._last_error_log = 0.0
        self._live_written: set[str] = set()
        self._next_live = time.monotonic() + c.live_interval
        self._new_roots: list[Span] = []
        self._next_purge = 0.0

    def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trifle-otel-worker", daemon=True)
        self._thread.start()

    def _reinit_after_fork(self) -> None:
        """In a forked child: the worker thread and queued items belong to the parent."""
        self.intake = deque()
        self.counters = PipelineCounters()
        if self._sink is not None:
            _inherited.append(self._sink)
        self._sink = None  # connections opened by the parent must not be shared
        # Buffered stats belong to the parent, which writes them; locks may be held there.
        _inherited.append(self.execution_stats)
        self.execution_stats = ExecutionStats(self.config, self.execution_stats.rules)
        was_stopped = self._stopped
        self._init_state()
        self._stopped = was_stopped
        if not was_stopped:
            self._start_worker()

    def _default_sink(self) -> TraceSink:
        data = open_data(self.config.resolved_data_url(), self.config)
        index = open_index(self.config.resolved_index_url())
        return TraceSink(index, data, compressed=self.config.gzip)

    def _run(self) -> None:
        interval = self.config.flush_interval
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            stopping = self._stopped
            flushes = [self._flush_requests.popleft() for _ in range(len(self._flush_requests))]
            ok = False
            try:
                ok = self._cycle(ignore_grace=bool(flushes), final=stopping)
            except Exception:  # never let the worker die: count and go on
                self.counters.processor_errors += 1
                logger.exception("trifle-otel worker cycle failed")
            for request in flushes:
                request.done(ok)
            if stopping:
                self._close()
                while self._flush_requests:
                    self._flush_requests.popleft().done(False)
                return

    def _cycle(self, *, ignore_grace: bool = False, final: bool = False) -> bool:
        """One round of work; True when nothing is left waiting for the stores."""
        self._drain()
        documents: list[Document] = []
        now_ns = time.time_ns()
        for execution in self.assembler.collect(ignore_grace=ignore_grace, final=final):
            doc = self._translate(execution, now_ns)
            if doc is None:
                continue
            if doc.ignored:
                self.counters.executions_ignored += 1
                self._observe_stats(execution, doc)
                if doc.reference in self._live_written:
                    self._live_written.discard(doc.reference)
                    self._discard(doc)
                continue
            self._live_written.discard(doc.reference)
            self._observe_stats(execution, doc)
            documents.append(doc)
        live_docs = self._live_documents(now_ns, final)
        self._write(documents, live_docs, final=final, force=ignore_grace)
        if ignore_grace or final:
            self.execution_stats.flush()
        else:
            self.execution_stats.flush_if_due()
        if final:
            self._spill_remaining()
            return False
        self._replay_spilled(budget=5.0 if ignore_grace else 0.5)
        self._purge_expired()
        if self._retry or self.execution_stats.buffer.pending:
            return False
        return not ignore_grace or not self._spill.pending()  # (only a flush asks for the answer)

    def _replay_spilled(self, budget: float) -> None:
        """Write what was spilled to disk, a file at a time, once the stores take writes again."""
        if self._retry or time.monotonic() < self._retry_at or not self._spill.pending():
            return
        try:
            sink = self._open_sink()
        except Exception:
            self._retry_at = time.monotonic() + self._backoff
            return
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            claim = self._spill.claim()
            if claim is None:
                return
            try:
                step = self.config.retry_buffer
                for start in range(0, len(claim.documents), step):
                    sink.write(claim.documents[start : start + step])
            except Exception as exc:
                claim.release()
                self.counters.write_errors += 1
                self._retry_at = time.monotonic() + self._backoff
                logger.warning("trifle-otel cannot replay spilled executions yet: %s", exc)
                return
            # Documents are idempotent, stats are not: they go in only once the file is done.
            self.counters.executions_written += len(claim.documents)
            self.counters.documents_replayed += len(claim.documents)
            if claim.inc or claim.sets:
                self.execution_stats.buffer.put_back(claim.inc, claim.sets)
                self.execution_stats.flush()
            claim.done()

    def _purge_expired(self) -> None:
        """Every ten minutes, remove executions past their retention (embedded store)."""
        now = time.monotonic()
        if now < self._next_purge or self._sink is None or self._retry:
            return
        self._next_purge = now + PURGE_INTERVAL
        try:
            self.counters.executions_expired += self._sink.purge_expired(datetime.now(timezone.utc))
        except Exception as exc:
            logger.warning("trifle-otel cannot remove expired executions: %s", exc)

    def _spill_remaining(self) -> None:
        """At shutdown, what the stores did not take goes to the spill directory."""
        buffer = self.execution_stats.buffer
        inc, sets = buffer.take()
        documents = list(self._retry.values())
        if not documents and not inc and not sets:
            return
        if self._spill.save(documents, inc, sets):
            self.counters.documents_spilled += len(documents)
            buffer.counters.spilled += len(inc) + len(sets)
        else:
            self.counters.documents_dropped += len(documents)
            buffer.counters.dropped += len(inc) + len(sets)
        self._retry.clear()

    def _drain(self) -> None:
        intake = self.intake
        assembler = self.assembler
        convert = self._convert
        pop = intake.popleft
        for _ in range(len(intake)):
            item = pop()
            try:
                if type(item) is tuple:
                    source = item[1]
                    if type(source) is Span:
                        span, source = source, None
                    else:
                        span = convert(source)  # type: ignore[misc]
                    assembler.start(span, source)
                    self._new_roots.append(span)
                elif type(item) is Span:
                    assembler.add(item)
                else:
                    assembler.add(convert(item))  # type: ignore[misc]
            except Exception:
                self.counters.processor_errors += 1
                logger.debug("cannot take a span", exc_info=True)

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
                self.execution_stats.observe(execution, doc)
            except Exception:
                self.counters.processor_errors += 1
                logger.exception("stats rules failed on execution %s", doc.reference)

    def _live_documents(self, now_ns: int, final: bool) -> list[Document]:
        """Running records: new roots at once, every running root each ``live_interval``."""
        if not self.config.live or final:
            self._new_roots.clear()
            return []
        now = time.monotonic()
        if now >= self._next_live:
            self._next_live = now + self.config.live_interval
            executions = self.assembler.running(self._convert)
        else:
            new = {(s.trace_id, s.span_id) for s in self._new_roots}
            executions = (
                [e for e in self.assembler.running(self._convert) if (e.root.trace_id, e.root.span_id) in new]
                if new
                else []
            )
        self._new_roots.clear()
        docs = []
        for execution in executions:
            doc = self._translate(execution, now_ns)
            if doc is None:
                continue
            if doc.ignored:
                if doc.reference in self._live_written:
                    self._live_written.discard(doc.reference)
                    self._discard(doc)
                continue
            docs.append(doc)
        return docs

    def _write(self, documents: list[Document], live_docs: list[Document], *, final: bool, force: bool = False) -> None:
        for doc in documents:
            self._retry[doc.reference] = doc
            self._retry.move_to_end(doc.reference)
        overflow = len(self._retry) - self.config.retry_buffer
        if overflow > 0:  # the oldest go to disk (or, when it cannot take them, are dropped)
            oldest = [self._retry.popitem(last=False)[1] for _ in range(overflow)]
            if self._spill.save(oldest):
                self.counters.documents_spilled += len(oldest)
            else:
                self.counters.documents_dropped += len(oldest)
        if not self._retry and not live_docs:
            return
        if time.monotonic() < self._retry_at and not (final or force):
            return
        pending = list(self._retry.values())
        try:
            sink = self._open_sink()
            if pending:
                sink.write(pending)
            if live_docs:
                sink.write(live_docs)
        except Exception as exc:
            self.counters.write_errors += 1
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                message = str(exc) if isinstance(exc, TrifleError) else repr(exc)
                logger.warning(
                    "trifle-otel cannot write traces (%s); %d executions wait for retry, %d dropped so far",
                    message,
                    len(self._retry),
                    self.counters.documents_dropped,
                )
            return
        self._backoff = 0.5
        self._retry_at = 0.0
        self.counters.executions_written += len(pending)
        self.counters.live_writes += len(live_docs)
        self._live_written.update(d.reference for d in live_docs)
        for doc in pending:
            self._retry.pop(doc.reference, None)

    def _open_sink(self) -> TraceSink:
        if self._sink is None:
            self._sink = self._sink_factory()
        return self._sink

    def _discard(self, doc: Document) -> None:
        try:
            if self._sink is not None:
                self._sink.discard([doc])
        except Exception:
            self.counters.write_errors += 1
            logger.debug("cannot discard ignored execution %s", doc.reference, exc_info=True)

    def _close(self) -> None:
        self.execution_stats.close()
        sink = self._sink
        if sink is not None:
            for store in (sink.index, sink.data):
                try:
                    store.close()
                except Exception:
                    pass
