"""What the pipeline counts (``processor.stats()``)."""

from __future__ import annotations

from dataclasses import dataclass


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
