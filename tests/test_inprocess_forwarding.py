"""In-process users keep their tracing backend: the processor beside the SDK's OTLP exporter
(in code, or ``OTEL_TRACES_EXPORTER=otlp,trifle``), both receiving every span."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otlp_recorder import Answer, RecordingOTLPServer
from trifle_otel import TrifleSpanProcessor
from trifle_otel.config import Config, load_config
from trifle_otel.sinks import load_lines
from trifle_otel.stores import open_data, open_index
from trifle_otel.stores.base import TraceQuery

BIN = Path(sys.executable).parent
STEPS = ["Loading rows", "Writing file", "Compressing"]


@pytest.fixture(params=["http", "grpc"])
def backend(request):
    with RecordingOTLPServer(request.param) as server:
        yield server


def otlp_exporter(backend: RecordingOTLPServer, timeout: float = 5):
    """The SDK's exporter as a user configures it for a backend (full URL over HTTP)."""
    if backend.protocol == "http":
        return HttpSpanExporter(endpoint=backend.traces_url, headers={"x-honeycomb-team": "test-key"}, timeout=timeout)
    return GrpcSpanExporter(endpoint=backend.endpoint, insecure=True, headers={"x-honeycomb-team": "test-key"}, timeout=timeout)


def run_jobs(tracer, count: int) -> None:
    """``count`` executions: a consumer root span with nested steps."""
    for n in range(count):
        with tracer.start_as_current_span("run/reports.export", kind=SpanKind.CONSUMER,
                                          attributes={"trifle.key": "reports/export", "n": n}):
            with tracer.start_as_current_span(STEPS[0]):
                pass
            with tracer.start_as_current_span(STEPS[1]):
                with tracer.start_as_current_span(STEPS[2]):
                    pass


def ids(spans) -> list[tuple[str, str, str]]:
    return [(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"), s.name) for s in spans]


def span_messages(requests) -> dict[bytes, tuple]:
    """Every span of OTLP requests with its resource and scope, by span id."""
    return {
        span.span_id: (resource_spans.resource, scope_spans.scope, span)
        for request in requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }


def stored(config: Config) -> list[dict]:
    index = open_index(config.resolved_index_url())
    try:
        return index.search(TraceQuery(key="reports/export")).records
    finally:
        index.close()


def step_lines(config: Config, record: dict) -> list[tuple[int, str]]:
    return [(line["level"], line["message"]) for line in load_lines(open_data(config.resolved_data_url()), record)]


EXPECTED_LINES = [
    (0, "Loading rows ↴"), (0, "Loading rows ↵"),
    (0, "Writing file ↴"), (1, "Compressing ↴"), (1, "Compressing ↵"), (0, "Writing file ↵"),
]


def test_processor_and_otlp_exporter_both_receive_every_span(backend, config):
    processor = TrifleSpanProcessor(config)
    sdk_ended = InMemorySpanExporter()  # what the SDK ended: the reference
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    provider.add_span_processor(BatchSpanProcessor(otlp_exporter(backend), max_export_batch_size=8))
    provider.add_span_processor(SimpleSpanProcessor(sdk_ended))
    try:
        run_jobs(provider.get_tracer("reports"), 6)
        assert provider.force_flush()
    finally:
        provider.shutdown()
    spans = ids(sdk_ended.get_finished_spans())
    assert len(spans) == 6 * 4
    assert backend.spans() == spans  # same trace and span ids, names, in the order they ended
    sent = encode_spans(sdk_ended.get_finished_spans())
    assert span_messages(r.request() for r in backend.delivered) == span_messages([sent])  # unchanged
    assert len(backend.attempts) == len(backend.delivered) >= 3  # batches of at most 8, none retried
    assert all(r.headers["x-honeycomb-team"] == "test-key" for r in backend.attempts)
    records = stored(config)
    roots = {(trace_id, span_id) for trace_id, span_id, name in spans if name == "run/reports.export"}
    assert {(r["trace_id"], r["span_id"]) for r in records} == roots
    assert sorted(r["meta"]["n"] for r in records) == list(range(6))
    for record in records:
        assert record["state"] == "success"
        assert step_lines(config, record) == EXPECTED_LINES
    assert processor.stats()["executions_written"] == 6 and processor.stats()["spans_dropped"] == 0


def test_a_slow_backend_does_not_hold_up_the_store(backend, config):
    backend.always(Answer(delay=30))  # answers only when stopped
    processor = TrifleSpanProcessor(config)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(otlp_exporter(backend, timeout=2), schedule_delay_millis=10))
    provider.add_span_processor(processor)
    try:
        run_jobs(provider.get_tracer("reports"), 3)
        backend.wait_for(lambda b: len(b.attempts) >= 1)  # the backend holds the export
        started = time.monotonic()
        assert processor.force_flush()
        assert time.monotonic() - started < 1.5
        assert len(stored(config)) == 3 and backend.delivered == []
    finally:
        backend.stop()
        provider.shutdown()


JOB = textwrap.dedent(
    """
    from opentelemetry import trace

    tracer = trace.get_tracer("job")
    for n in range(4):
        with tracer.start_as_current_span("run/reports.export", attributes={"trifle.key": "reports/export", "n": n}):
            for name in ("Loading rows", "Writing file"):
                with tracer.start_as_current_span(name) as span:
                    context = span.get_span_context()
                    print("span", format(context.trace_id, "032x"), format(context.span_id, "016x"), name)
            context = trace.get_current_span().get_span_context()
            print("span", format(context.trace_id, "032x"), format(context.span_id, "016x"), "run/reports.export")
    print("job done")
    """
)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_and_trifle_exporters_under_opentelemetry_instrument(tmp_path, protocol):
    """The zero-code set-up: OTEL_TRACES_EXPORTER=otlp,trifle with the OTLP endpoint and
    headers from the environment, as the README shows it for Honeycomb."""
    job = tmp_path / "job.py"
    job.write_text(JOB)
    home = tmp_path / "store"
    with RecordingOTLPServer(protocol) as backend:
        proc = instrumented(job, home, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                            OTEL_EXPORTER_OTLP_ENDPOINT=backend.url,  # http://: plain text, also for gRPC
                            OTEL_EXPORTER_OTLP_HEADERS="x-honeycomb-team=test-key")
        assert proc.returncode == 0, proc.stderr
        assert "job done" in proc.stdout
        printed = [tuple(line.split(" ", 3)[1:]) for line in proc.stdout.splitlines() if line.startswith("span ")]
        assert len(printed) == 12
        assert sorted(backend.spans()) == sorted(printed)
        assert all(r.headers["x-honeycomb-team"] == "test-key" for r in backend.attempts)
        assert len(backend.attempts) == len(backend.delivered)
        if protocol == "http/protobuf":
            assert {r.path for r in backend.attempts} == {"/v1/traces"}  # appended to the base endpoint
        resource = backend.delivered[0].request().resource_spans[0].resource
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "reports-worker"
    assert_stored(home, printed)


def instrumented(job: Path, home: Path, **variables: str) -> subprocess.CompletedProcess:
    """``job`` under ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=otlp,trifle``,
    a clean OTEL_/TRIFLE_OTEL_ environment and ``variables``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRIFLE_OTEL_"))},
        "OTEL_TRACES_EXPORTER": "otlp,trifle",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "reports-worker",
        "TRIFLE_OTEL_HOME": str(home),
        **variables,
    }
    return subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, str(job)],
                          env=env, capture_output=True, text=True, timeout=120)


def assert_stored(home: Path, printed: list[tuple[str, ...]]) -> None:
    config = load_config(environ={"TRIFLE_OTEL_HOME": str(home)})
    records = stored(config)
    roots = {(t, s) for t, s, name in printed if name == "run/reports.export"}
    assert {(r["trace_id"], r["span_id"]) for r in records} == roots
    assert {r["service"] for r in records} == {"reports-worker"}
    for record in records:
        assert step_lines(config, record) == [
            (0, "Loading rows ↴"), (0, "Loading rows ↵"), (0, "Writing file ↴"), (0, "Writing file ↵"),
        ]


def test_otlp_first_with_a_backend_hanging_at_exit_still_stores_every_execution(tmp_path):
    """``otlp,trifle`` with the backend hanging as the process exits: the OTLP exporter waits
    for its whole timeout, longer than the exit's flush of the tracer provider, while the
    trifle exporter's last spans still sit in its batch processor (its schedule delay is
    longer than the run). They reach the store before it stops."""
    job = tmp_path / "job.py"
    job.write_text(JOB)
    home = tmp_path / "store"
    with RecordingOTLPServer("http") as backend:
        backend.always(Answer(delay=60))  # cut short by stop()
        proc = instrumented(job, home, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                            OTEL_EXPORTER_OTLP_ENDPOINT=backend.url, OTEL_EXPORTER_OTLP_TIMEOUT="5.5",
                            OTEL_BSP_SCHEDULE_DELAY="60000")
        assert proc.returncode == 0, proc.stderr
        assert len(backend.attempts) >= 1 and backend.delivered == []  # the OTLP exporter did try
    printed = [tuple(line.split(" ", 3)[1:]) for line in proc.stdout.splitlines() if line.startswith("span ")]
    assert len(printed) == 12
    assert_stored(home, printed)
