"""The OTLP/HTTP and OTLP/gRPC receivers, with real OTel SDK exporters as clients and raw
requests for everything a real client would never send."""

from __future__ import annotations

import gzip
import http.client
import logging
import socket
import threading
import time

import grpc
import orjson
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from otlp_samples import (
    SPEC_EXAMPLE_JSON,
    RecordingIntake,
    gzip_bomb,
    many_spans_request,
    sdk_request,
    sdk_spans,
    to_otlp_json,
)

from trifle_otel.errors import ConfigError, WALFull
from trifle_otel.ingest.metrics import ReceiverMetrics
from trifle_otel.ingest.otlp_grpc import GRPCServer
from trifle_otel.ingest.otlp_http import HTTPServer, create_http_app
from trifle_otel.ingest.otlp_intake import Admission, Intake, ReceivedBatch
from trifle_otel.ingest.sdk import from_readable_span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TOKEN = "s3cret-token"
MiB = 1 << 20


@pytest.fixture
def intake() -> RecordingIntake:
    return RecordingIntake()


@pytest.fixture
def http_receiver(intake):
    """Start OTLP/HTTP receivers (``http_receiver(**options)``); all stop after the test."""
    servers = []

    def start(target: Intake | None = None, **options) -> HTTPServer:
        server = HTTPServer(create_http_app(target or intake, **options), "127.0.0.1", 0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def grpc_receiver(intake):
    servers = []

    def start(target: Intake | None = None, **options) -> GRPCServer:
        server = GRPCServer(target or intake, "127.0.0.1", 0, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=1)


def post(server: HTTPServer, body, content_type: str | None = PROTOBUF, path: str = "/v1/traces", method: str = "POST",
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        all_headers = dict(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        connection.request(method, path, body=body, headers=all_headers, encode_chunked=not isinstance(body, (bytes, type(None))))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def status_of(body: bytes, content_type: str = PROTOBUF) -> tuple[int, str]:
    if content_type == JSON:
        document = orjson.loads(body)
        return document["code"], document["message"]
    status = status_pb2.Status.FromString(body)
    return status.code, status.message


def assert_still_accepts(server: HTTPServer, intake: RecordingIntake) -> None:
    """Nothing else is lost: a good request right after is accepted."""
    before = len(intake.spans)
    code, _, _ = post(server, sdk_request(jobs=1, steps=1).SerializeToString())
    assert code == 200
    assert len(intake.spans) == before + 2


# -- OTLP/HTTP with the OTel SDK's exporter -----------------------------------------------------


@pytest.mark.parametrize("compression", [HTTPCompression.Gzip, HTTPCompression.NoCompression])
def test_http_sdk_exporter_protobuf(http_receiver, intake, compression):
    server = http_receiver(token=TOKEN)
    exporter = HTTPSpanExporter(endpoint=f"{server.url}/v1/traces", compression=compression,
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    spans = sdk_spans(jobs=3, steps=2)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert sorted(intake.spans, key=lambda s: s.span_id) == sorted(map(from_readable_span, spans), key=lambda s: s.span_id)
    (batch,) = intake.batches
    assert (batch.transport, batch.content_type) == ("http", PROTOBUF)
    if compression == HTTPCompression.Gzip:
        assert batch.content_encoding == "gzip" and batch.body[:2] == b"\x1f\x8b"  # the bytes as received
    else:
        assert batch.content_encoding == "" and batch.body == sdk_request_bytes(spans)
    # the write-ahead log's record of it decodes to the same spans
    assert ReceivedBatch.from_record(batch.to_record()) == batch


def sdk_request_bytes(spans) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans).SerializeToString()


def test_http_json_as_the_specification_writes_it(http_receiver, intake):
    server = http_receiver()
    code, headers, body = post(server, SPEC_EXAMPLE_JSON, JSON)
    assert (code, headers["content-type"], body) == (200, JSON, b"{}")
    (span,) = intake.spans
    assert (span.trace_id, span.kind, span.start_ns) == ("5b8efff798038103d269b633813fc60c", "server", 1544712660000000000)
    assert intake.batches[0].content_type == JSON
    # gzip, JSON with a charset parameter
    code, _, _ = post(server, gzip.compress(to_otlp_json(sdk_request())), "application/json; charset=utf-8",
                      headers={"Content-Encoding": "gzip"})
    assert code == 200 and len(intake.spans) == 9
    assert ReceivedBatch.from_record(intake.batches[1].to_record()).spans == intake.batches[1].spans


def test_empty_requests_succeed_without_troubling_the_intake(http_receiver, intake):
    server = http_receiver()
    code, headers, body = post(server, b"")
    assert (code, headers["content-type"]) == (200, PROTOBUF)
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    assert post(server, b"{}", JSON)[::2] == (200, b"{}")
    assert intake.batches == []


# -- OTLP/HTTP errors, each followed by a good request ----------------------------------------------


def test_other_methods_get_405(http_receiver, intake):
    server = http_receiver()
    for method in ("GET", "PUT", "DELETE"):
        code, headers, body = post(server, None, None, method=method)
        assert (code, headers["allow"]) == (405, "POST")
        assert status_of(body, JSON) == (code_pb2.UNIMPLEMENTED, f"{method} is not allowed on /v1/traces: send POST")
    assert_still_accepts(server, intake)


def test_other_content_types_and_encodings_get_415(http_receiver, intake):
    server = http_receiver()
    code, _, body = post(server, b"hello", "text/plain")
    assert code == 415
    assert "unsupported content type 'text/plain': send application/x-protobuf or application/json" in status_of(body, JSON)[1]
    code, _, body = post(server, b"x", PROTOBUF, headers={"Content-Encoding": "br"})
    assert code == 415 and "unsupported content encoding 'br'" in status_of(body)[1]
    code, _, _ = post(server, b"x", None)
    assert code == 415
    assert_still_accepts(server, intake)


def test_truncated_protobuf_gets_400_with_a_status(http_receiver, intake):
    server = http_receiver()
    code, headers, body = post(server, sdk_request().SerializeToString()[:-9])
    assert (code, headers["content-type"]) == (400, PROTOBUF)
    rpc_code, message = status_of(body)
    assert rpc_code == code_pb2.INVALID_ARGUMENT and "truncated" in message
    assert intake.batches == []
    assert_still_accepts(server, intake)


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"resourceSpans": [{"scopeSpans": [', "not valid JSON"),
        (SPEC_EXAMPLE_JSON.replace(b"5B8EFFF798038103D269B633813FC60C", b"W47/95gDgQPSabYzgT/GDA=="),
         "traceId 'W47/95gDgQPSabYzgT/GDA==' is not 32 hex characters (OTLP/JSON uses hex ids, not base64)"),
    ],
)
def test_bad_json_gets_400_in_json(http_receiver, intake, body, message):
    server = http_receiver()
    code, headers, answer = post(server, body, JSON)
    assert (code, headers["content-type"]) == (400, JSON)
    rpc_code, text = status_of(answer, JSON)
    assert rpc_code == code_pb2.INVALID_ARGUMENT and message in text
    assert_still_accepts(server, intake)


def test_gzip_bomb_is_cut_off_while_inflating(http_receiver, intake):
    server = http_receiver()
    bomb = gzip_bomb(1024)  # 1 GiB of zeros in ~1 MiB
    started = time.perf_counter()
    code, _, body = post(server, bomb, headers={"Content-Encoding": "gzip"})
    elapsed = time.perf_counter() - started
    assert code == 413
    assert status_of(body) == (code_pb2.RESOURCE_EXHAUSTED, (
        f"the request body inflates to more than the limit of {16 * MiB:,} bytes ({len(bomb):,} bytes of gzip as received)"))
    assert elapsed < 5, elapsed  # stopped at 16 MiB, not after inflating 1 GiB
    assert_still_accepts(server, intake)


def test_100k_spans_in_one_request(http_receiver, intake):
    server = http_receiver()
    body = gzip.compress(many_spans_request(100_000).SerializeToString(), 1)
    code, _, answer = post(server, body, headers={"Content-Encoding": "gzip"})
    assert code == 200 and ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
    assert len(intake.spans) == 100_000
    assert_still_accepts(server, intake)


def test_invalid_utf8_is_repaired_and_reported_as_a_warning(http_receiver, intake):
    server = http_receiver()
    request = sdk_request(jobs=1, steps=1)
    request.resource_spans[0].scope_spans[0].spans[0].name = "caf\u00e9 job"
    body = request.SerializeToString().replace("caf\u00e9".encode(), b"caf\xe9!")  # same length, Latin-1 \xe9
    code, _, answer = post(server, body)
    assert code == 200
    partial = ExportTraceServiceResponse.FromString(answer).partial_success
    assert partial.rejected_spans == 0
    assert partial.error_message == "1 string value(s) were not valid UTF-8; invalid bytes were replaced with U+FFFD"
    assert "caf\ufffd! job" in [s.name for s in intake.spans]
    assert_still_accepts(server, intake)


def test_20_mib_attribute_refused_over_the_limit_accepted_under_it(http_receiver, intake):
    request = many_spans_request(3, attribute_bytes=20 * MiB)
    raw = request.SerializeToString()
    small = http_receiver()  # default limit: 16 MiB
    code, _, body = post(small, raw)
    assert code == 413 and "over the limit of 16,777,216 bytes" in status_of(body)[1]
    code, _, body = post(small, gzip.compress(raw, 1), headers={"Content-Encoding": "gzip"})  # small on the wire
    assert code == 413 and "inflates to more than the limit" in status_of(body)[1]
    assert_still_accepts(small, intake)
    large = http_receiver(max_request_bytes=32 * MiB)
    code, _, _ = post(large, raw)
    assert code == 200
    assert len(intake.spans[-3].attributes["payload"]) == 20 * MiB


def test_a_body_without_content_length_is_capped_while_read(http_receiver, intake):
    server = http_receiver(max_request_bytes=MiB)

    def chunks():
        for _ in range(64):
            yield bytes(64 * 1024)  # 4 MiB in all, chunked

    code, _, body = post(server, chunks())
    assert code == 413 and "over the limit of 1,048,576 bytes" in status_of(body)[1]
    assert_still_accepts(server, intake)


def test_missing_or_wrong_token_gets_401(http_receiver, intake):
    server = http_receiver(token=TOKEN)
    good = sdk_request(jobs=1, steps=1).SerializeToString()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        code, answer_headers, body = post(server, good, headers=headers)
        assert code == 401 and answer_headers["www-authenticate"].startswith("Bearer")
        assert status_of(body)[0] == code_pb2.UNAUTHENTICATED
    assert intake.batches == []
    code, _, _ = post(server, good, headers={"Authorization": f"bearer {TOKEN}"})
    assert code == 200
    exporter = HTTPSpanExporter(endpoint=f"{server.url}/v1/traces", timeout=5)  # no token: refused, not retried
    try:
        assert exporter.export(sdk_spans(1, 1)) == SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert len(intake.batches) == 1


# -- refusals, partial success, health and metrics ----------------------------------------------------


def test_refusals_carry_retry_after_and_the_sdk_exporter_retries(http_receiver, intake):
    server = http_receiver()
    intake.refusals.append(Admission.refuse("overloaded", "queue full", retry_after=2.5, status=429))
    code, headers, body = post(server, sdk_request().SerializeToString())
    assert (code, headers["retry-after"]) == (429, "3")
    assert status_of(body) == (code_pb2.RESOURCE_EXHAUSTED, "queue full")
    intake.refusals.append(Admission.refuse("wal_full", "log full", retry_after=0.2))
    exporter = HTTPSpanExporter(endpoint=f"{server.url}/v1/traces", timeout=10)
    try:
        assert exporter.export(sdk_spans(1, 1)) == SpanExportResult.SUCCESS  # retried after 1 s
    finally:
        exporter.shutdown()
    assert len(intake.batches) == 1


class _FullIntake(RecordingIntake):
    def accept(self, batch):
        raise WALFull("the write-ahead log is full")


class _BrokenIntake(RecordingIntake):
    def accept(self, batch):
        raise RuntimeError("bug")


def test_a_full_log_is_503_and_an_intake_fault_500(http_receiver, caplog):
    code, headers, body = post(http_receiver(_FullIntake()), sdk_request().SerializeToString())
    assert (code, headers["retry-after"]) == (503, "5")
    assert status_of(body) == (code_pb2.UNAVAILABLE, "the write-ahead log is full")
    with caplog.at_level(logging.ERROR, logger="trifle_otel"):
        code, headers, body = post(http_receiver(_BrokenIntake()), SPEC_EXAMPLE_JSON, JSON)
    assert code == 500 and "retry-after" not in headers
    assert "internal error" in status_of(body, JSON)[1]
    assert "the OTLP intake failed" in caplog.text


def test_partial_success_from_decoding_and_from_the_intake(http_receiver, intake):
    server = http_receiver()
    request = sdk_request(jobs=1, steps=2)
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b""  # cannot be assembled
    intake.partial = Admission.accept(rejected_spans=1, error_message="1 span(s) too late")
    code, _, body = post(server, request.SerializeToString())
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert code == 200 and partial.rejected_spans == 2
    assert partial.error_message.startswith("1 span(s) rejected; the first: span ") and partial.error_message.endswith("; 1 span(s) too late")
    assert len(intake.spans) == 2
    code, _, body = post(server, SPEC_EXAMPLE_JSON, JSON)
    assert orjson.loads(body) == {"partialSuccess": {"rejectedSpans": "1", "errorMessage": "1 span(s) too late"}}


def test_requests_past_the_concurrency_bound_get_503_before_their_body_is_read(http_receiver):
    entered, release = threading.Event(), threading.Event()

    class SlowIntake(RecordingIntake):
        def accept(self, batch):
            entered.set()
            release.wait(10)
            return super().accept(batch)

    slow = SlowIntake()
    server = http_receiver(slow, max_concurrent_requests=1)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(post(server, sdk_request().SerializeToString())))
    thread.start()
    try:
        assert entered.wait(10)
        code, headers, body = post(server, sdk_request().SerializeToString())
        assert (code, headers["retry-after"]) == (503, "1")
        assert "too many requests in progress" in status_of(body)[1]
    finally:
        release.set()
        thread.join(10)
    assert first[0][0] == 200 and len(slow.batches) == 1


def test_health_follows_the_intake(http_receiver, intake):
    server = http_receiver(token=TOKEN)  # probes need no token
    assert post(server, None, None, "/health", "GET")[::2] == (200, b'{"status":"ok"}')
    intake.unhealthy = "write-ahead log full"
    code, _, body = post(server, None, None, "/health", "GET")
    assert (code, orjson.loads(body)) == (503, {"status": "refusing", "reason": "write-ahead log full"})


def test_metrics_count_requests_spans_and_read_the_intake(http_receiver, grpc_receiver, intake):
    metrics = ReceiverMetrics(intake.metrics)
    server = http_receiver(metrics=metrics)
    grpc_server = grpc_receiver(metrics=metrics)
    assert post(server, sdk_request(jobs=2, steps=1).SerializeToString())[0] == 200
    assert post(server, b"junk", PROTOBUF)[0] == 400
    intake.refusals.append(Admission.refuse("overloaded", "busy", status=429))
    assert post(server, SPEC_EXAMPLE_JSON, JSON)[0] == 429
    exporter = GRPCSpanExporter(endpoint=grpc_server.target, insecure=True, timeout=10)
    try:
        assert exporter.export(sdk_spans(1, 2)) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    code, headers, body = post(server, None, None, "/metrics", "GET")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for line in (
        'trifle_otel_spans_received_total{transport="http"} 4.0',
        'trifle_otel_spans_received_total{transport="grpc"} 3.0',
        'trifle_otel_spans_refused_total{reason="overloaded",transport="http"} 1.0',
        'trifle_otel_requests_total{status="200",transport="http"} 1.0',
        'trifle_otel_requests_total{status="400",transport="http"} 1.0',
        'trifle_otel_requests_total{status="429",transport="http"} 1.0',
        'trifle_otel_requests_total{status="OK",transport="grpc"} 1.0',
        "trifle_otel_pending_spans 7.0",
        "trifle_otel_wal_bytes 1234.0",
        "trifle_otel_executions_written_total 7.0",
    ):
        assert line in text, line
    assert "# TYPE trifle_otel_pending_spans gauge" in text
    assert "python_gc" not in text  # a registry of its own, not the process-global one


def test_a_taken_port_is_a_clear_error(intake):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port} for OTLP/HTTP"):
            HTTPServer(create_http_app(intake), "127.0.0.1", port).start()
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} for OTLP/gRPC"):
            GRPCServer(intake, "127.0.0.1", port).start()


# -- OTLP/gRPC ---------------------------------------------------------------------------------------


def _raw_export(server: GRPCServer, body: bytes, metadata=(), compression=None):
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        return call(body, metadata=metadata, compression=compression, timeout=30)


def test_grpc_sdk_exporter_with_gzip_and_token(grpc_receiver, intake):
    server = grpc_receiver(token=TOKEN)
    exporter = GRPCSpanExporter(endpoint=server.target, insecure=True, compression=grpc.Compression.Gzip,
                                headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    spans = sdk_spans(jobs=2, steps=3)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert sorted(intake.spans, key=lambda s: s.span_id) == sorted(map(from_readable_span, spans), key=lambda s: s.span_id)
    (batch,) = intake.batches
    assert (batch.transport, batch.content_type, batch.content_encoding) == ("grpc", PROTOBUF, "")
    assert ReceivedBatch.from_record(batch.to_record()) == batch


def test_grpc_refusal_is_unavailable_with_retry_info(grpc_receiver, intake):
    server = grpc_receiver()
    intake.refusals.append(Admission.refuse("wal_full", "log full", retry_after=0.25))
    with pytest.raises(grpc.RpcError) as caught:
        _raw_export(server, sdk_request().SerializeToString())
    error = caught.value
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "log full")
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry_info = error_details_pb2.RetryInfo()
    assert status.code == code_pb2.UNAVAILABLE and status.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.ToNanoseconds() == 250_000_000
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == retry_info
    # the SDK exporter waits the RetryInfo delay and succeeds
    intake.refusals.append(Admission.refuse("overloaded", "busy", retry_after=0.2, status=429))
    exporter = GRPCSpanExporter(endpoint=server.target, insecure=True, timeout=10)
    try:
        started = time.perf_counter()
        assert exporter.export(sdk_spans(1, 1)) == SpanExportResult.SUCCESS
        assert 0.15 < time.perf_counter() - started < 5
    finally:
        exporter.shutdown()
    assert len(intake.batches) == 1


def test_grpc_bad_input(grpc_receiver, intake):
    server = grpc_receiver(token=TOKEN)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    good = sdk_request(jobs=1, steps=1).SerializeToString()
    cases = [
        (good[:-5], auth, None, grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        (good, (), None, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"),
        (good, (("authorization", "Bearer wrong"),), None, grpc.StatusCode.UNAUTHENTICATED, "bearer token"),
        (many_spans_request(1, 20 * MiB).SerializeToString(), auth, grpc.Compression.Gzip, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]
    for body, metadata, compression, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            _raw_export(server, body, metadata, compression)
        assert caught.value.code() == code and message in caught.value.details()
        assert ExportTraceServiceResponse.FromString(_raw_export(server, good, auth)) == ExportTraceServiceResponse()
    assert len(intake.batches) == len(cases)
    assert ExportTraceServiceResponse.FromString(_raw_export(server, b"", auth)) == ExportTraceServiceResponse()


def test_grpc_limit_and_partial_success(grpc_receiver, intake):
    server = grpc_receiver(max_request_bytes=32 * MiB)
    _raw_export(server, many_spans_request(1, 20 * MiB).SerializeToString(), compression=grpc.Compression.Gzip)
    assert len(intake.spans[0].attributes["payload"]) == 20 * MiB
    request = sdk_request(jobs=1, steps=1)
    request.resource_spans[0].scope_spans[0].spans[0].span_id = bytes(8)
    answer = ExportTraceServiceResponse.FromString(_raw_export(server, request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 1
    assert "has an empty or all-zero spanId" in answer.partial_success.error_message
