"""Sidecar throughput, part by part.

(a) decode ceiling: parsing OTLP trace requests and reading every span's fields into the
    neutral span model (``trifle_otel.ingest.otlp_decode``), protobuf and JSON.  Requests
    are what the OpenTelemetry Python SDK's OTLP exporter sends: 512 spans each, jobs of one
    CONSUMER root and 5 children, ~6 attributes per span, an event on some.  This is the
    ceiling for one serve process: everything after decoding (the write-ahead log,
    assembly, translation, stores) only lowers it.  Reported per CPU second (what one
    core can do, steady when other work shares the machine) and per wall-clock second.

Usage: python bench/sidecar_throughput.py [--requests 40] [--part a]
"""

from __future__ import annotations

import argparse
import base64
import random
import time

import orjson
from google.protobuf import json_format
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trifle_otel.ingest.otlp_decode import decode_protobuf
from trifle_otel.ingest.otlp_json import decode_json

SPANS_PER_REQUEST = 512
STEPS = ("Fetching main product", "Loading offers", "Computing price", "Checking margin", "Saving price")


def make_request(seed: int, spans_per_request: int = SPANS_PER_REQUEST):
    """An ExportTraceServiceRequest as the SDK's OTLP exporter encodes it."""
    rng = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "pricing-worker", "service.instance.id": f"w{seed}", "host.name": "node-1"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("pricing.jobs", "1.4.0")
    made = 0
    while made < spans_per_request:
        customer = f"c{rng.randrange(500)}"
        attrs = {
            "celery.task_name": "pricing.calculate_price",
            "customer.id": customer,
            "reseller.id": f"r{rng.randrange(20)}",
            "product.id": rng.randrange(1, 10**6),
            "price": round(rng.uniform(10, 900), 2),
            "retry": False,
        }
        with tracer.start_as_current_span("run/pricing.calculate_price", kind=trace_api.SpanKind.CONSUMER, attributes=attrs):
            made += 1
            for step in STEPS[: min(5, spans_per_request - made)]:
                with tracer.start_as_current_span(step) as span:
                    made += 1
                    span.set_attributes(
                        {
                            "step.index": STEPS.index(step),
                            "offers.count": rng.randrange(50),
                            "source": "catalog",
                            "cache.hit": rng.random() < 0.5,
                            "margin": rng.random(),
                            "trifle.result": f"{rng.uniform(10, 900):.2f} EUR",
                        }
                    )
                    if step == "Checking margin":
                        span.add_event("margin checked", {"threshold": 0.03})
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans()[:spans_per_request])


def to_otlp_json(request) -> bytes:
    """OTLP/JSON as the specification writes it: hex ids, integer enums."""
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


def _touch(spans) -> int:
    """Read every field of every span, as the pipeline would."""
    n = 0
    for s in spans:
        n += len(s.trace_id) + len(s.span_id) + len(s.name) + s.start_ns % 7 + (s.end_ns or 0) % 7
        n += len(s.attributes) + len(s.events) + len(s.resource) + len(s.kind) + len(s.status)
    return n


def decode_ceiling(n_requests: int) -> dict[str, float]:
    requests = [make_request(i) for i in range(4)]
    protobuf_bodies = [r.SerializeToString() for r in requests]
    json_bodies = [to_otlp_json(r) for r in requests]
    results = {}
    for label, bodies, decode in (("protobuf", protobuf_bodies, decode_protobuf), ("json", json_bodies, decode_json)):
        decode(bodies[0])  # warm up
        spans = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n_requests):
            decoded = decode(bodies[i % len(bodies)])
            _touch(decoded.spans)
            spans += len(decoded.spans)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        results[label] = spans / cpu
        size = sum(map(len, bodies)) / len(bodies) / 1024
        print(
            f"(a) decode ceiling, {label:8}: {spans / cpu:10,.0f} spans per CPU second, {spans / elapsed:10,.0f} spans/s wall "
            f"({n_requests} requests of {SPANS_PER_REQUEST} spans, {size:.0f} KiB each)"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests decoded per encoding")
    parser.add_argument("--part", choices=["a"], action="append", help="which parts to run (default: all)")
    args = parser.parse_args()
    parts = args.part or ["a"]
    if "a" in parts:
        decode_ceiling(args.requests)


if __name__ == "__main__":
    main()
