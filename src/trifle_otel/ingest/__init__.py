"""Ingest: the ways spans reach the pipeline (in-process processor, SDK exporter, OTLP)."""

from __future__ import annotations

from ..pipeline import Pipeline


class PipelineOwner:
    """What the processor and the exporter expose of the pipeline they feed."""

    pipeline: Pipeline

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.pipeline.force_flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.pipeline.shutdown()

    def stats(self) -> dict[str, int]:
        """Counters: spans dropped, executions written/ignored, write errors, stats tracked, ..."""
        return self.pipeline.stats()
