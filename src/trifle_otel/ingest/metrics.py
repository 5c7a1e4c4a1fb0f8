"""Prometheus metrics of the OTLP receivers (``GET /metrics`` on the HTTP port).

One :class:`ReceiverMetrics` is shared by the HTTP and the gRPC receiver of a process, in a
``CollectorRegistry`` of its own (never prometheus-client's global one, which would mix in
whatever else the process registers and break a second sidecar in the same process,
such as in tests).  The receivers count what they see (spans received and refused by
reason, requests by status); what lies behind the intake (executions written, pending and
late spans, write-ahead log bytes, store errors) is read from ``Intake.metrics()`` at
each scrape, so it is never stale and costs nothing between scrapes.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .otlp_intake import INTAKE_METRICS

__all__ = ["ReceiverMetrics", "CONTENT_TYPE_LATEST"]

logger = logging.getLogger("trifle_otel")

PREFIX = "trifle_otel_"


class ReceiverMetrics:
    def __init__(self, intake_metrics: Callable[[], Mapping[str, float]] | None = None,
                 forward_metrics: Callable[[], list[dict]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.spans_received = Counter(
            PREFIX + "spans_received", "Spans accepted from OTLP export requests", ["transport"], registry=self.registry
        )
        self.spans_refused = Counter(
            PREFIX + "spans_refused",
            "Spans refused, by reason (invalid_span, rejected, wal_full, overloaded, ...)",
            ["transport", "reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            PREFIX + "requests",
            "OTLP export requests by transport and answer (HTTP status, or gRPC status code name)",
            ["transport", "status"],
            registry=self.registry,
        )
        if intake_metrics is not None:
            self.registry.register(_IntakeCollector(intake_metrics))
        if forward_metrics is not None:
            self.registry.register(_ForwardCollector(forward_metrics))

    def request(self, transport: str, status: int | str) -> None:
        self.requests.labels(transport, str(status)).inc()

    def received(self, transport: str, spans: int) -> None:
        if spans:
            self.spans_received.labels(transport).inc(spans)

    def refused(self, transport: str, reason: str, spans: int) -> None:
        if spans:
            self.spans_refused.labels(transport, reason).inc(spans)

    def render(self) -> bytes:
        """The Prometheus text exposition (content type ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


_NAME = re.compile(r"[^a-zA-Z0-9_]")


class _IntakeCollector:
    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[Metric]:
        try:
            values = dict(self._read())
        except Exception:  # a scrape never fails because the pipeline could not answer
            logger.exception("reading the intake's metrics failed")
            return
        for name, value in sorted(values.items()):
            kind, help_text = INTAKE_METRICS.get(name, ("gauge", name.replace("_", " ")))
            metric_name = PREFIX + _NAME.sub("_", name)
            if kind == "counter":
                yield CounterMetricFamily(metric_name, help_text, value=float(value))
            else:
                yield GaugeMetricFamily(metric_name, help_text, value=float(value))


class _ForwardCollector:
    """Per forward target (label ``target``): what was sent, retried and dropped (by
    reason), the queue on disk, and the last error."""

    def __init__(self, read: Callable[[], list[dict]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            targets = list(self._read())
        except Exception:
            logger.exception("reading the forwarders' metrics failed")
            return
        if not targets:
            return
        p = PREFIX + "forward_"
        families = {
            "requests_sent": CounterMetricFamily(p + "requests_sent", "Requests delivered to the target", labels=["target"]),
            "spans_sent": CounterMetricFamily(p + "spans_sent", "Spans in requests delivered to the target", labels=["target"]),
            "retries": CounterMetricFamily(p + "retries", "Attempts that failed and were retried (429/502/503/504, UNAVAILABLE, no answer)", labels=["target"]),
            "rejected_spans": CounterMetricFamily(p + "rejected_spans", "Spans the target refused in a partial success", labels=["target"]),
            "queue_bytes": GaugeMetricFamily(p + "queue_bytes", "Bytes of the target's queue on disk", labels=["target"]),
            "queue_max_bytes": GaugeMetricFamily(p + "queue_max_bytes", "The queue's byte bound (forward[].max_queue_bytes)", labels=["target"]),
            "queued_requests": GaugeMetricFamily(p + "queued_requests", "Requests waiting to be sent", labels=["target"]),
            "queued_spans": GaugeMetricFamily(p + "queued_spans", "Spans waiting to be sent", labels=["target"]),
            "in_flight": GaugeMetricFamily(p + "in_flight", "Requests being sent (forward[].max_in_flight at most)", labels=["target"]),
            "failing": GaugeMetricFamily(p + "failing", "1 while the target's last attempt failed and is being retried", labels=["target"]),
            "last_error_time": GaugeMetricFamily(p + "last_error_timestamp_seconds", "When the target last failed (Unix time; 0: never)", labels=["target"]),
        }
        dropped_requests = CounterMetricFamily(p + "dropped_requests", "Requests dropped, by reason (http_400 ...: refused for good; queue_full: past max_queue_bytes)", labels=["target", "reason"])
        dropped_spans = CounterMetricFamily(p + "dropped_spans", "Spans in dropped requests, by reason", labels=["target", "reason"])
        last_error = GaugeMetricFamily(p + "last_error_info", "The target's last error (in the label), 1", labels=["target", "error"])
        for values in targets:
            name = str(values["target"])
            for key, family in families.items():
                family.add_metric([name], float(values[key]))
            for reason, (requests, spans) in sorted(values["dropped"].items()):
                dropped_requests.add_metric([name, reason], float(requests))
                dropped_spans.add_metric([name, reason], float(spans))
            if values["last_error"]:
                last_error.add_metric([name, str(values["last_error"])[:200]], 1.0)
        yield from families.values()
        yield dropped_requests
        yield dropped_spans
        yield last_error
