"""``TrifleSpanProcessor``: the drop-in span processor.

On the application thread it only appends the span to the pipeline's bounded intake (no
conversion, no I/O); the pipeline's worker does everything else.  Errors are
contained and counted; it never raises into the application.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..config import Config, load_config
from ..pipeline import Pipeline
from . import PipelineOwner
from .sdk import SDKStarts, from_readable_span


class TrifleSpanProcessor(PipelineOwner, SpanProcessor):
    """Turns each execution's spans into a Trifle trace document (and stats).

    ``TrifleSpanProcessor()`` reads the configuration from the environment
    (``TRIFLE_OTEL_CONFIG``, ``TRIFLE_OTEL_HOME``, ``TRIFLE_OTEL_*_URL``); pass a
    :class:`Config`, a ``config_file`` or keyword settings to override.
    """

    def __init__(self, config: Config | None = None, *, config_file: str | None = None, **settings: Any) -> None:
        if config is None:
            config = load_config(config_file, overrides=settings)
        elif settings or config_file:
            raise TypeError("pass either a Config or config_file/settings, not both")
        self.config = config
        self.pipeline = Pipeline(config, convert=from_readable_span, starts=SDKStarts(config.skip_bare_producers))
        self._live = config.live

    # The two hooks below run on the application thread for every span: keep them to an
    # append on a deque (no conversion, no I/O; a lock only to count a drop when full).  A
    # recording span is taken even when unsampled (RECORD_ONLY): the sampler decides what
    # backends get, not what jobs are traced.  In live mode a start is recorded too: a local
    # root's, so a running job has a record at once, and a step's, so a job's record says
    # which step it is in while it runs.

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self._live:
            return
        intake = self.pipeline.intake
        started = intake.started
        if len(started) < intake.max_items and not intake.closed:
            started.append(span)
        else:
            intake.count_start_dropped()

    def on_end(self, span: ReadableSpan) -> None:
        intake = self.pipeline.intake
        queue = intake.queue
        if len(queue) < intake.max_items and not intake.closed:
            queue.append(span)
            if len(queue) >= intake.wake_at:
                intake.wake.set()
        else:
            intake.count_dropped()
