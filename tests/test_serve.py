"""``trifle-otel serve`` end to end, as a real process: real OTel SDK exporters as clients,
executions and stats in the stores, every kind of bad input answered without losing the
next good request, running jobs, late spans, start markers, and a clean stop."""

from __future__ import annotations

import gzip
import signal
import socket
import subprocess
import time

import grpc
import orjson
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_samples import SPEC_EXAMPLE_JSON, gzip_bomb, many_spans_request, sdk_request, sdk_spans
from serve_process import TRIFLE, Serve, write_config

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MiB = 1 << 20
KEY = "run/pricing.calculate_price"


@pytest.fixture
def serve(tmp_path):
    """Start serve processes (``serve(**config_sections)``); all are stopped after the test."""
    started: list[Serve] = []

    def start(*args: str, home=None, **sections) -> Serve:
        config = write_config(tmp_path, **sections)
        process = Serve(home or tmp_path / "home", config, *args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.__exit__()


def lines_of(sidecar: Serve, reference: str) -> list[tuple[int, str]]:
    shown = sidecar.cli_json("traces", "show", reference)
    return [(line["level"], line["message"]) for line in shown["lines"]]


# -- real clients -------------------------------------------------------------------------------


def test_sdk_exporters_over_http_gzip_and_grpc_store_executions_and_stats(serve):
    sidecar = serve()
    http_exporter = HTTPSpanExporter(endpoint=f"http://{sidecar.http}/v1/traces", compression=HTTPCompression.Gzip, timeout=10)
    grpc_exporter = GRPCSpanExporter(endpoint=sidecar.grpc, insecure=True, compression=grpc.Compression.Gzip, timeout=10)
    try:
        assert http_exporter.export(sdk_spans(jobs=3, steps=2)) == SpanExportResult.SUCCESS
        assert grpc_exporter.export(sdk_spans(jobs=2, steps=2)) == SpanExportResult.SUCCESS
    finally:
        http_exporter.shutdown()
        grpc_exporter.shutdown()
    records = sidecar.wait_records(5)
    assert {r["key"] for r in records} == {KEY}
    assert {r["state"] for r in records} == {"success"}  # the failed step was handled
    assert sorted(r["meta"]["customer.id"] for r in records) == ["c0", "c0", "c1", "c1", "c2"]
    assert lines_of(sidecar, records[0]["reference"]) == [
        (0, "step 0 \u21b4"), (1, "checked"), (1, '{"threshold": 0.03}'), (0, "step 0 \u21b5"),
        (0, "step 1 \u21b4"), (1, "checked"), (1, '{"threshold": 0.03}'), (0, "step 1 \u21b5"), (0, "below cost"),
    ]
    deadline = time.monotonic() + 10
    while sidecar.stat(KEY) < 5 and time.monotonic() < deadline:  # written by the next checkpoint
        time.sleep(0.1)
    assert sidecar.stat(KEY) == 5
    metrics = sidecar.metrics()
    assert metrics['trifle_otel_spans_received_total{transport="http"}'] == 9
    assert metrics['trifle_otel_spans_received_total{transport="grpc"}'] == 6
    assert metrics["trifle_otel_executions_written_total"] == 5
    assert metrics["trifle_otel_pending_spans"] == 0
    assert sidecar.stop() == 0


def test_the_specification_json_example_is_stored(serve):
    sidecar = serve()
    code, headers, body = sidecar.post(SPEC_EXAMPLE_JSON, JSON)
    assert (code, headers["content-type"], body) == (200, JSON, b"{}")
    # a SERVER span whose parent never arrives: its caller is elsewhere, it is a local root
    (record,) = sidecar.wait_records(1)
    assert (record["key"], record["trace_id"], record["span_id"]) == (
        "I'm a server span", "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    assert record["first_at"].year == 2018 and record["duration"] == 1000
    assert record["links"] == [{"type": "parent", "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b173"}]


# -- bad input, each followed by a good request that is stored ------------------------------------


def status_message(body: bytes, content_type: str = PROTOBUF) -> tuple[int, str]:
    if content_type == JSON:
        document = orjson.loads(body)
        return document["code"], document["message"]
    status = status_pb2.Status.FromString(body)
    return status.code, status.message


class GoodRequests:
    """One new execution per call, posted and then found in the stores."""

    def __init__(self, sidecar: Serve) -> None:
        self.sidecar = sidecar
        self.stored = len(sidecar.records())

    def check(self) -> None:
        code, _, _ = self.sidecar.post(sdk_request(jobs=1, steps=1).SerializeToString())
        assert code == 200
        self.stored += 1
        self.sidecar.wait_records(self.stored)


def test_bad_input_is_answered_and_loses_nothing_else(serve):
    token = "t0ken"
    sidecar = serve(receivers={"auth": {"token": token}, "max_request_bytes": 32 * MiB, "wal_max_bytes": 256 * MiB})
    auth = {"Authorization": f"Bearer {token}"}
    good = GoodRequests(sidecar)
    post = sidecar.post

    def check(answer, status, expected_code, message, content_type=PROTOBUF):
        code, _, body = answer
        assert code == status, body
        rpc_code, text = status_message(body, content_type)
        assert rpc_code == expected_code and message in text, text
        good.sidecar.post = lambda body, ct=PROTOBUF, headers=None: post(body, ct, {**auth, **(headers or {})})
        good.check()

    check(post(sdk_request().SerializeToString(), headers={}), 401, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token")
    check(post(sdk_request().SerializeToString()[:-9], headers=auth), 400, code_pb2.INVALID_ARGUMENT, "truncated")
    check(post(b"hello", "text/plain", headers=auth), 415, code_pb2.INVALID_ARGUMENT, "unsupported content type", JSON)
    check(post(b'{"resourceSpans": [', JSON, headers=auth), 400, code_pb2.INVALID_ARGUMENT, "not valid JSON", JSON)
    base64_ids = SPEC_EXAMPLE_JSON.replace(b"5B8EFFF798038103D269B633813FC60C", b"W47/95gDgQPSabYzgT/GDA==")
    check(post(base64_ids, JSON, headers=auth), 400, code_pb2.INVALID_ARGUMENT, "not base64", JSON)
    check(post(gzip_bomb(1024), headers={**auth, "Content-Encoding": "gzip"}), 413, code_pb2.RESOURCE_EXHAUSTED,
          "inflates to more than the limit")


def test_a_100k_span_request_is_stored_whole(serve):
    sidecar = serve()
    body = gzip.compress(many_spans_request(100_000).SerializeToString(), 1)
    code, _, answer = sidecar.post(body, headers={"Content-Encoding": "gzip"})
    assert code == 200 and ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
    records = sidecar.wait_records(1000, timeout=120)
    assert {r["length"] for r in records} == {99 * 2}  # 99 children each: a begin and an end line
    GoodRequests(sidecar).check()


def test_invalid_utf8_is_repaired_and_a_20_mib_attribute_becomes_an_artifact(serve):
    sidecar = serve(receivers={"max_request_bytes": 32 * MiB})
    request = sdk_request(jobs=1, steps=1)
    request.resource_spans[0].scope_spans[0].spans[-1].name = "caf\u00e9 job"  # the root
    body = request.SerializeToString().replace("caf\u00e9".encode(), b"caf\xe9!")
    code, _, answer = sidecar.post(body)
    assert code == 200
    assert "not valid UTF-8" in ExportTraceServiceResponse.FromString(answer).partial_success.error_message
    (record,) = sidecar.wait_records(1)
    assert record["name"] == "caf\ufffd! job"
    big = many_spans_request(3, attribute_bytes=20 * MiB)
    code, _, _ = sidecar.post(gzip.compress(big.SerializeToString(), 1), headers={"Content-Encoding": "gzip"})
    assert code == 200
    (record,) = [r for r in sidecar.wait_records(2) if r["name"] == "span 0"]
    assert record["meta"]["payload"] == {"artifact": "meta_1.txt", "size": 20 * MiB}  # the record stays small
    shown = sidecar.cli("traces", "show", record["reference"], "--artifact", "meta_1.txt")
    assert shown.returncode == 0 and len(shown.stdout.strip()) == 20 * MiB and set(shown.stdout.strip()) == {"x"}
    GoodRequests(sidecar).check()
