"""Replay stage: what an outage (or a shutdown) spilled to disk goes to the stores, a file at a
time, once they take writes again.  Documents are idempotent, stats increments are not:
a file's increments are added only once all its documents are written."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ..sinks import TraceSink
from ..stats.sink import ExecutionStats
from .counters import PipelineCounters
from .spill import Spill
from .writer import DocumentWriter

logger = logging.getLogger("trifle_otel")


def replay_spilled(
    spill: Spill,
    open_sink: Callable[[], TraceSink],
    writer: DocumentWriter,
    stats: ExecutionStats,
    counters: PipelineCounters,
    *,
    budget: float,
    batch: int,
) -> None:
    if writer.retry or writer.backing_off or not spill.pending():
        return
    try:
        sink = open_sink()
    except Exception:
        writer.failed_now()
        return
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        claim = spill.claim()
        if claim is None:
            return
        try:
            for start in range(0, len(claim.documents), batch):
                if sink.write(claim.documents[start : start + batch]):
                    raise RuntimeError("some of the spilled documents' data could not be written")
        except Exception as exc:
            claim.release()
            counters.write_errors += 1
            writer.failed_now()
            logger.warning("trifle-otel cannot replay spilled executions yet: %s", exc)
            return
        counters.executions_written += len(claim.documents)
        counters.documents_replayed += len(claim.documents)
        if claim.inc or claim.sets:
            stats.buffer.put_back(claim.inc, claim.sets)
            stats.flush()
        claim.done()
