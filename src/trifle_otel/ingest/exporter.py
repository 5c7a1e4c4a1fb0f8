"""``TrifleSpanExporter``: the zero-code entry point (``OTEL_TRACES_EXPORTER=trifle``).

The auto-instrumentation agent wraps exporters in a ``BatchSpanProcessor``; ``export``
hands each batch of ended spans to the same pipeline the processor uses.  An exporter
sees only ended spans, so it writes each execution once (no live records).
"""

from __future__ import annotations

from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..config import Config, load_config
from ..pipeline import Pipeline
from . import PipelineOwner
from .sdk import from_readable_span


class TrifleSpanExporter(PipelineOwner, SpanExporter):
    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        if config is None:
            config = load_config(overrides=settings)
        self.config = config
        self.pipeline = Pipeline(config, convert=from_readable_span)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.pipeline.submit_many(list(spans))
        except Exception:
            self.pipeline.counters.processor_errors += 1
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
