"""OTLP requests for the receiver tests: made by the real OTel SDK and its OTLP encoder, or
by hand with opentelemetry-proto for what the SDK never sends."""

from __future__ import annotations

import base64
import threading
import zlib
from dataclasses import dataclass, field

import orjson
from google.protobuf import json_format
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trifle_otel.ingest.otlp_intake import Admission, ReceivedBatch

# The OTLP specification's own JSON example: upper-case hex ids, times as strings, kind 2.
SPEC_EXAMPLE_JSON = b"""{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
    "scopeSpans": [{
      "scope": {"name": "my.library", "version": "1.0.0",
                "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
      "spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "parentSpanId": "EEE19B7EC3C1B173",
        "name": "I'm a server span",
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": "1544712661000000000",
        "kind": 2,
        "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}]
      }]
    }]
  }]
}"""


def sdk_spans(jobs: int = 2, steps: int = 3, service: str = "pricing-worker"):
    """Finished SDK spans of ``jobs`` executions (a CONSUMER root with ``steps`` children)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": "w1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("pricing.jobs", "1.0")
    for job in range(jobs):
        attributes = {"customer.id": f"c{job}", "product.id": job, "price": 10.5 + job, "vip": job % 2 == 0,
                      "trifle.tags": ["a", "b"], "codes": [1, 2]}
        with tracer.start_as_current_span("run/pricing.calculate_price", kind=trace_api.SpanKind.CONSUMER, attributes=attributes):
            for step in range(steps):
                with tracer.start_as_current_span(f"step {step}", attributes={"step": step}) as span:
                    span.add_event("checked", {"threshold": 0.03})
                    if step == steps - 1:
                        span.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "below cost"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def sdk_request(jobs: int = 2, steps: int = 3) -> ExportTraceServiceRequest:
    return encode_spans(sdk_spans(jobs, steps))


def to_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the specification writes it: hex ids, integer enums, 64-bit ints as strings."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in document.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", ()):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    return orjson.dumps(document)


def many_spans_request(count: int, attribute_bytes: int = 0) -> ExportTraceServiceRequest:
    """A request of ``count`` spans built directly (fast), one trace per 100 spans;
    ``attribute_bytes`` adds one string attribute of that size to the first span."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "bulk"
    ss = rs.scope_spans.add()
    ss.scope.name = "bulk"
    spans = ss.spans
    for i in range(count):
        span = spans.add()
        span.trace_id = (i // 100 + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        if i % 100:
            span.parent_span_id = (i - i % 100 + 1).to_bytes(8, "big")
        span.name = f"span {i}"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = 1_700_000_000_000_000_000 + i + 1000
        span.flags = 0x100
    if attribute_bytes:
        kv = spans[0].attributes.add()
        kv.key, kv.value.string_value = "payload", "x" * attribute_bytes
    return request


def gzip_bomb(zero_mib: int = 1024) -> bytes:
    """A valid gzip body inflating to ``zero_mib`` MiB of zeros, built without holding them:
    after a full flush deflate output no longer depends on what came before, so one
    compressed MiB is repeated."""
    mib = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(zero_mib):
        crc = zlib.crc32(mib, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    size = (zero_mib << 20) & 0xFFFFFFFF
    return header + block * zero_mib + tail + crc.to_bytes(4, "little") + size.to_bytes(4, "little")


@dataclass
class RecordingIntake:
    """An intake that keeps every batch; ``refusals`` are answered first, in turn."""

    batches: list[ReceivedBatch] = field(default_factory=list)
    refusals: list[Admission] = field(default_factory=list)
    partial: Admission | None = None
    unhealthy: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, batch: ReceivedBatch) -> Admission:
        with self.lock:
            if self.refusals:
                return self.refusals.pop(0)
            self.batches.append(batch)
            return self.partial or Admission.accept()

    def health(self) -> str | None:
        return self.unhealthy

    def metrics(self) -> dict[str, float]:
        return {"pending_spans": float(len(self.spans)), "wal_bytes": 1234.0, "executions_written": 7.0}

    @property
    def spans(self) -> list:
        return [span for batch in list(self.batches) for span in batch.spans]
