"""The recording OTLP server the forwarding tests use, checked with the OpenTelemetry SDK's
own OTLP exporters (HTTP and gRPC) as clients, and with raw HTTP/gRPC where an exporter
would hide what is on the wire."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otlp_recorder import GRPC_METHOD, Answer, RecordingOTLPServer


@pytest.fixture(params=["http", "grpc"])
def recorder(request):
    with RecordingOTLPServer(request.param) as server:
        yield server


def sdk_exporter(server: RecordingOTLPServer, timeout: float = 5, **kw):
    """The SDK's OTLP exporter for the server's protocol (gzip over HTTP)."""
    if server.protocol == "http":
        return HttpSpanExporter(endpoint=server.traces_url, compression=Compression.Gzip, timeout=timeout, **kw)
    return GrpcSpanExporter(endpoint=server.endpoint, insecure=True, timeout=timeout, **kw)


def make_spans(n: int = 3, name: str = "job"):
    """Ended SDK spans: a root with n - 1 children."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("recorder-test")
    with tracer.start_as_current_span(name):
        for i in range(n - 1):
            with tracer.start_as_current_span(f"step {i}"):
                pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def ids(spans) -> list[tuple[str, str, str]]:
    return [(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"), s.name) for s in spans]


def post(server: RecordingOTLPServer, body: bytes, content_type: str = "application/x-protobuf",
         path: str = "/v1/traces", method: str = "POST", **headers) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": content_type, **headers})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw_grpc_export(server: RecordingOTLPServer, body: bytes, metadata=()):
    """One Export call with raw bytes: (response bytes, None) or (None, the RpcError)."""
    with grpc.insecure_channel(server.endpoint) as channel:
        export = channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        try:
            return export(body, metadata=metadata, timeout=5), None
        except grpc.RpcError as error:
            return None, error


def test_spans_from_the_sdk_exporter_arrive_as_sent_with_their_headers(recorder):
    spans = make_spans(3)
    exporter = sdk_exporter(recorder, headers={"x-honeycomb-team": "key-1", "x-honeycomb-dataset": "jobs"})
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    [recorded] = recorder.delivered
    assert recorder.attempts == [recorded]
    assert recorder.spans() == ids(spans)
    assert recorded.headers["x-honeycomb-team"] == "key-1" and recorded.headers["x-honeycomb-dataset"] == "jobs"
    assert recorded.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    sent = encode_spans(spans).SerializePartialToString()
    if recorder.protocol == "http":
        assert recorded.path == "/v1/traces" and recorded.content_type == "application/x-protobuf"
        assert recorded.content_encoding == "gzip" and recorded.body[:2] == b"\x1f\x8b"  # still compressed
        assert int(recorded.headers["content-length"]) == len(recorded.body)
        assert recorded.payload() == gzip.decompress(recorded.body) == sent
    else:
        assert recorded.path == GRPC_METHOD and recorded.content_encoding == ""
        assert recorded.body == sent
    assert recorded.request().resource_spans[0].scope_spans[0].scope.name == "recorder-test"


def test_http_429_with_retry_after_is_retried_by_the_sdk_after_that_delay():
    with RecordingOTLPServer("http") as server:
        server.respond(Answer(429, headers={"Retry-After": "1"}, message="slow down"))
        exporter = sdk_exporter(server)
        spans = make_spans(2)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        first, second = server.attempts
        assert (first.answer.http_status, second.answer.http_status) == (429, 200)
        assert server.delivered == [second]
        assert second.time - first.time >= 0.95  # Retry-After: 1 was honoured
        assert first.body == second.body and server.spans() == ids(spans)


def test_http_error_bodies_are_a_status_in_the_request_content_type():
    with RecordingOTLPServer("http") as server:
        body = encode_spans(make_spans(1)).SerializeToString()
        server.respond(Answer(400, message="bad dataset"), Answer(503, retry_delay=2))
        status, headers, answer = post(server, body)
        assert status == 400 and headers["content-type"] == "application/x-protobuf"
        assert status_pb2.Status.FromString(answer).message == "bad dataset"
        assert status_pb2.Status.FromString(answer).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        status, headers, answer = post(server, body)
        assert status == 503 and headers["retry-after"] == "2"
        status, headers, answer = post(server, body)
        assert (status, answer) == (200, b"")  # an empty ExportTraceServiceResponse
        assert [r.answer.http_status for r in server.attempts] == [400, 503, 200]
        assert len(server.delivered) == 1


def test_http_json_requests_decode_with_hex_ids_and_get_json_answers():
    trace_id, span_id, parent_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    request = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "node-worker"}}]},
        "scopeSpans": [{"scope": {"name": "js"}, "spans": [{
            "traceId": trace_id, "spanId": span_id, "parentSpanId": parent_id, "name": "step", "kind": 1,
            "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": 1795000000001000000,
            "links": [{"traceId": trace_id, "spanId": parent_id}], "someFutureField": True,
        }]}],
    }]}
    with RecordingOTLPServer("http") as server:
        status, headers, answer = post(server, json.dumps(request).encode(), "application/json; charset=utf-8")
        assert (status, headers["content-type"], answer) == (200, "application/json", b"{}")
        assert server.spans() == [(trace_id, span_id, "step")]
        span = server.delivered[0].request().resource_spans[0].scope_spans[0].spans[0]
        assert span.parent_span_id.hex() == parent_id and span.links[0].span_id.hex() == parent_id
        assert span.end_time_unix_nano == 1795000000001000000
        server.respond(Answer(401, message="unknown API key"))
        status, headers, answer = post(server, json.dumps(request).encode(), "application/json")
        assert status == 401 and json.loads(answer)["message"] == "unknown API key"


def test_what_is_not_an_otlp_trace_export_is_refused_recorded_and_never_delivered():
    with RecordingOTLPServer("http") as server:
        good = encode_spans(make_spans(1)).SerializeToString()
        server.respond(Answer(503))  # kept for the first real export
        assert post(server, good, path="/v1/logs")[0] == 404
        assert post(server, b"", method="GET")[0] == 405
        assert post(server, good, content_type="text/plain")[0] == 415
        assert post(server, gzip.compress(good))[0] == 400  # compressed without saying so
        assert post(server, b"\xff\xff\xff")[0] == 400
        assert post(server, good, **{"Content-Encoding": "br"})[0] == 400
        assert post(server, good)[0] == 503
        assert post(server, gzip.compress(good), **{"Content-Encoding": "gzip"})[0] == 200
        assert [r.answer.http_status for r in server.attempts] == [404, 405, 415, 400, 400, 400, 503, 200]
        assert [r.method for r in server.attempts][:2] == ["POST", "GET"]
        assert len(server.delivered) == 1
    with RecordingOTLPServer("grpc") as server:
        response, error = raw_grpc_export(server, b"\xff\xff\xff")
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        response, error = raw_grpc_export(server, good, metadata=(("x-honeycomb-team", "k"),))
        assert response == b"" and error is None
        assert len(server.attempts) == 2 and len(server.delivered) == 1
        assert server.delivered[0].headers["x-honeycomb-team"] == "k"


def test_grpc_unavailable_with_retry_delay_is_retried_by_the_sdk_after_that_delay():
    with RecordingOTLPServer("grpc") as server:
        server.respond(Answer(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_delay=0.25, message="busy"))
        exporter = sdk_exporter(server)
        spans = make_spans(2)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        first, second = server.attempts
        assert first.answer.grpc_code is grpc.StatusCode.UNAVAILABLE and server.delivered == [second]
        # Without the RetryInfo the SDK waits 0.8-1.2 s before its first retry.
        assert 0.24 <= second.time - first.time < 0.75
        assert server.spans() == ids(spans)


def test_grpc_retry_info_is_in_the_status_details_trailer():
    with RecordingOTLPServer("grpc") as server:
        server.respond(Answer(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=1.5, message="quota"))
        _, error = raw_grpc_export(server, encode_spans(make_spans(1)).SerializeToString())
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and error.details() == "quota"
        trailers = dict(error.trailing_metadata())
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and status.message == "quota"
        [detail] = status.details
        info = error_details_pb2.RetryInfo()
        assert detail.Unpack(info) and info.retry_delay.ToNanoseconds() == 1_500_000_000
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info
        assert server.delivered == []


def test_an_answer_reads_the_same_over_both_protocols(recorder):
    """A permanent error is not retried by the SDK, a retryable one is, whichever protocol."""
    recorder.respond(Answer(400, message="bad"))
    exporter = sdk_exporter(recorder)
    try:
        assert exporter.export(make_spans(1)) is SpanExportResult.FAILURE
        assert len(recorder.attempts) == 1 and recorder.delivered == []
        recorder.respond(Answer(503, retry_delay=0.1))
        assert exporter.export(make_spans(1)) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert [r.answer.describe(recorder.protocol) for r in recorder.attempts] == (
        ["400", "503", "200"] if recorder.protocol == "http" else ["INVALID_ARGUMENT", "UNAVAILABLE", "OK"]
    )


def test_always_answers_until_cleared_after_the_scripted_answers(recorder):
    recorder.always(Answer(503))
    recorder.respond(Answer(401), Answer(200))
    exporter = sdk_exporter(recorder, timeout=0.5)
    try:
        results = [exporter.export(make_spans(1)) for _ in range(2)]
        assert results == [SpanExportResult.FAILURE, SpanExportResult.SUCCESS]
        assert exporter.export(make_spans(1)) is SpanExportResult.FAILURE  # 503 from now on (no time to retry)
        recorder.always(None)
        assert exporter.export(make_spans(1)) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert [r.answer.http_code for r in recorder.attempts] == [401, 200, 503, 200]
    assert len(recorder.delivered) == 2


def test_stop_refuses_clients_and_start_comes_back_on_the_same_port(recorder):
    exporter = sdk_exporter(recorder, timeout=1)
    try:
        assert exporter.export(make_spans(1)) is SpanExportResult.SUCCESS  # a live connection
        port = recorder.port
        recorder.stop()
        started = time.monotonic()
        assert exporter.export(make_spans(1)) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 3
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((recorder.host, port), timeout=2).close()
        assert len(recorder.attempts) == 1
        recorder.start()
        assert recorder.port == port
        spans = make_spans(2)
        recorder.wait_for(lambda r: exporter.export(spans) is SpanExportResult.SUCCESS, timeout=10)
    finally:
        exporter.shutdown()
    assert recorder.spans()[-2:] == ids(spans)


def test_stop_closes_live_http_connections():
    with RecordingOTLPServer("http") as server:
        body = encode_spans(make_spans(1)).SerializeToString()
        client = socket.create_connection((server.host, server.port), timeout=5)
        request = (f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        client.sendall(request)
        assert client.recv(4096).startswith(b"HTTP/1.1 200")  # kept alive
        server.stop()
        assert client.recv(4096) == b""  # closed by the server
        client.close()


def test_a_delayed_answer_is_a_slow_target_and_stop_cuts_it_short(recorder):
    recorder.respond(Answer(delay=0.4))
    exporter = sdk_exporter(recorder, timeout=5)
    try:
        started = time.monotonic()
        assert exporter.export(make_spans(1)) is SpanExportResult.SUCCESS
        assert time.monotonic() - started >= 0.4
    finally:
        exporter.shutdown()
    recorder.respond(Answer(delay=30))
    body = encode_spans(make_spans(1)).SerializeToString()
    started = time.monotonic()
    outcome = []
    if recorder.protocol == "http":
        client = threading.Thread(target=lambda: outcome.append(_post_or_error(recorder, body)))
    else:
        client = threading.Thread(target=lambda: outcome.append(raw_grpc_export(recorder, body)[1]))
    client.start()
    recorder.wait_for(lambda r: len(r.attempts) == 2, timeout=5)
    recorder.stop()
    client.join(5)
    assert not client.is_alive() and time.monotonic() - started < 5
    assert len(recorder.delivered) == 1
    if recorder.protocol == "grpc":
        assert outcome[0].code() is grpc.StatusCode.UNAVAILABLE
    else:
        assert isinstance(outcome[0], (ConnectionError, http.client.HTTPException))


def _post_or_error(server, body):
    try:
        return post(server, body)
    except (OSError, http.client.HTTPException) as error:
        return error


def test_wait_for_fails_with_what_was_received():
    with RecordingOTLPServer("http") as server:
        server.respond(Answer(500, message="boom"))
        post(server, encode_spans(make_spans(2)).SerializeToString())
        with pytest.raises(AssertionError) as failure:
            server.wait_for(lambda s: len(s.delivered) == 1, timeout=0.2)
        text = str(failure.value)
        assert "1 attempts, 0 delivered" in text and "2 spans -> 500" in text


def test_a_protocol_that_is_not_otlp_is_refused():
    with pytest.raises(ValueError, match="'http' or 'grpc'"):
        RecordingOTLPServer("thrift")
