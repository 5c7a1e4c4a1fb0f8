"""The sidecar's intake: durable before acknowledged, refused rather than dropped.

Receivers call :meth:`SidecarIntake.accept` with each decoded request.  It first checks
that the request can be taken whole — room in the pipeline's queue (reserved now, so
concurrent requests cannot overfill it), room in the write-ahead log, the stores keeping
up — and refuses with 503 + ``Retry-After`` (gRPC UNAVAILABLE + RetryInfo) if not; then
appends the request to the log (returning once it is on disk) and queues its spans, under
the gate shared with checkpoints.  Only then does the client get its 200 / OK.

Memory stays bounded while the stores are down: finished executions wait in memory for
retry up to ``processor.retry_buffer`` of them; past that, requests are refused until the
stores take writes again (the log holds everything acknowledged meanwhile).
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

from ..config import Config
from ..errors import StoreError, WALFull
from ..forward import Forwarding
from ..ingest.otlp_intake import Admission, ReceivedBatch
from ..pipeline import Pipeline
from ..wal import WAL
from .checkpoint import Checkpointer
from .gate import Gate

RECENT = 5.0  # seconds a refusal for a full log or queue keeps /health at 503


class SidecarIntake:
    def __init__(self, config: Config, pipeline: Pipeline, wal: WAL, gate: Gate, checkpointer: Checkpointer,
                 forwarding: Forwarding | None = None) -> None:
        self.config = config
        self.forwarding = forwarding
        self.pipeline = pipeline
        self.wal = wal
        self.gate = gate
        self.checkpointer = checkpointer
        self.stopping = False
        self._lock = threading.Lock()
        self._reserved = 0
        self._recent: dict[str, tuple[str, float]] = {}  # reason -> (message, when)
        self.accepted_requests = 0
        self.accepted_spans = 0
        self.refused: dict[str, int] = {}  # requests refused, by reason
        self.wal_error = ""  # the last failure to write the log

    # -- Intake protocol ---------------------------------------------------------------------

    def admit(self, size: int) -> Admission | None:
        """Before a request is read and decoded: refuse at once what would be refused after
        (shutting down, the stores down, the log or the queue full)."""
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        if self.wal.bytes + size + 512 > self.wal.max_bytes:
            return self._refuse("wal_full", self._wal_full_message(), 5.0)
        queue = self.pipeline.intake
        held = len(queue) + self._reserved
        if held >= queue.max_items:
            return self._refuse("overloaded", self._busy_message(held), 1.0)
        return None

    def accept(self, batch: ReceivedBatch) -> Admission:
        spans = batch.spans
        count = len(spans)
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        record = batch.to_record()
        if self.wal.bytes + len(record) + 8 > self.wal.max_bytes:
            return self._refuse("wal_full", self._wal_full_message(), 5.0)
        queue = self.pipeline.intake
        with self.gate.shared():
            with self._lock:
                held = len(queue) + self._reserved
                if held and held + count > queue.max_items:
                    return self._refuse("overloaded", self._busy_message(held), 1.0)
                self._reserved += count
            try:
                if self.forwarding:  # first, so a crash after the log's sync cannot skip it: at least once
                    self.forwarding.offer(record, count + batch.rejected_spans)
                self.wal.append(record)  # durable when it returns
                queue.put_many(spans)
            except WALFull:  # (another request took the last room first)
                return self._refuse("wal_full", self._wal_full_message(), 5.0)
            except StoreError as exc:  # the disk: full, or a failed sync (the log stops then)
                self.wal_error = str(exc)
                return self._refuse("wal_failed", f"the write-ahead log cannot be written: {exc}", 30.0)
            finally:
                with self._lock:
                    self._reserved -= count
        self.accepted_requests += 1
        self.accepted_spans += count
        return Admission.accept()

    def health(self) -> str | None:
        if self.stopping:
            return "shutting down"
        stores = self._stores_refusal()
        if stores:
            return stores
        now = time.monotonic()
        recent = sorted((when, reason, message) for reason, (message, when) in list(self._recent.items()) if now - when < RECENT)
        if self.wal.bytes >= self.wal.max_bytes * 0.95 or any(reason == "wal_full" for _, reason, _ in recent):
            return self._wal_full_message()
        return recent[-1][2] if recent else None

    def metrics(self) -> Mapping[str, float]:
        pipeline = self.pipeline
        counters = pipeline.counters
        assembly = pipeline.assembler.counters
        buffer = pipeline.execution_stats.buffer.counters
        wal = self.wal.stats()
        checkpointer = self.checkpointer
        return {
            "executions_written": counters.executions_written,
            "pending_spans": pipeline.assembler.pending_spans,
            "late_spans": assembly.late_spans,
            "wal_bytes": wal["bytes"],
            "wal_max_bytes": wal["max_bytes"],
            "wal_segments": wal["segments"],
            "store_errors": counters.write_errors + buffer.write_errors,
            "queued_spans": len(pipeline.intake),
            "retry_executions": len(pipeline.writer.retry),
            "running_records": counters.live_writes,
            "duplicate_spans": assembly.duplicate_spans,
            "evicted_spans": assembly.evicted_spans,
            "executions_finished_early": assembly.early_executions,
            "late_dropped_spans": assembly.late_dropped_spans,
            "truncated_spans": assembly.truncated_spans,
            "retained_spans": assembly.retained_spans,
            "checkpoints": checkpointer.committed,
            "checkpoint_failures": checkpointer.failures,
            "stats_tracks": buffer.tracks,
            "processor_errors": counters.processor_errors + counters.translation_errors,
            **{f"requests_refused_{reason}": n for reason, n in self.refused.items()},
        }

    # -- refusals -------------------------------------------------------------------------

    def _refusal(self) -> Admission | None:
        if self.stopping or self.pipeline.intake.closed:
            return self._refuse("shutting_down", "the sidecar is shutting down; retry against its next start", 5.0)
        stores = self._stores_refusal()
        if stores:
            return self._refuse("stores_unavailable", stores, 5.0)
        return None

    def _stores_refusal(self) -> str | None:
        """Refuse while the stores fail and ``retry_buffer`` finished executions wait for
        them, so memory stays bounded during an outage.  A large write under way is not a
        failure: the worker is busy with it, its queue fills, and requests are refused as
        ``overloaded`` (retry after 1 s) if it stays full."""
        writer = self.pipeline.writer
        if not (writer.last_error or writer.retry) or writer.waiting < self.config.retry_buffer:
            return None
        return f"stores unavailable: {writer.last_error or 'writes are failing'} ({writer.waiting:,} executions wait for retry)"

    def _wal_full_message(self) -> str:
        message = (f"write-ahead log full ({self.wal.bytes:,} of {self.wal.max_bytes:,} bytes, receivers.wal_max_bytes); "
                   "it is trimmed as received spans are stored")
        if self.checkpointer.last_error:
            message += f"; trimming is failing: {self.checkpointer.last_error}"
        return message

    @staticmethod
    def _busy_message(held: int) -> str:
        return f"the sidecar's queue is full ({held:,} spans waiting for the worker); retry shortly"

    def _refuse(self, reason: str, message: str, retry_after: float) -> Admission:
        self._recent[reason] = (message, time.monotonic())
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return Admission.refuse(reason, message, retry_after=retry_after, status=503)


__all__ = ["SidecarIntake"]
