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
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from otlp_build import S, request
from otlp_samples import SPEC_EXAMPLE_JSON, gzip_bomb, many_spans_request, sdk_request, sdk_spans
from serve_process import TRIFLE, Serve, write_config
from test_otlp_node import node  # noqa: F401  (the fixture: npm ci of tests/node)

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


@pytest.mark.parametrize("store_process", [True, False], ids=["store-process", "stores-in-serve"])
def test_sdk_exporters_over_http_gzip_and_grpc_store_executions_and_stats(serve, store_process):
    sidecar = serve(receivers={"store_process": store_process})
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
    assert bool(sidecar.children()) == store_process  # (receivers.store_process)
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


# -- running jobs, start markers, late spans, traces across processes ---------------------------

WORKER = {"service.name": "invoice-worker", "service.instance.id": "worker-1"}
WEB = {"service.name": "shop-web", "service.instance.id": "web-1"}


def post_json(sidecar: Serve, resource: dict, *spans: S) -> None:
    code, _, body = sidecar.post(request(resource, *spans), JSON)
    assert code == 200, body


def wait_for(predicate, timeout: float = 30, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def record_of(sidecar: Serve, span_id: str, state: str | None = None, length: int | None = None) -> dict | None:
    for record in sidecar.records():
        if record["span_id"] == span_id and (state is None or record["state"] == state) and (
                length is None or record["length"] == length):
            return record
    return None


def test_a_running_job_from_another_language_then_its_root_then_a_late_span(serve):
    sidecar = serve(traces={"stuck_after": 1, "tag_attributes": ["customer.id"]})
    root = S("run/invoices.generate", 0, 900, kind="consumer", attrs={"trifle.key": "invoices/generate", "customer.id": "acme"})
    load = root.child("Loading orders", 10, 200)
    query = load.child("SELECT orders", 20, 150, kind="client")
    post_json(sidecar, WORKER, query, load)  # the job runs: its root has not ended
    running = wait_for(lambda: record_of(sidecar, root.span_id, "running"), what="a running record")
    assert running["name"] == "invoice-worker: root span not received yet" and running["length"] == 4
    stuck = wait_for(lambda: sidecar.cli_json("traces", "list", "--stuck")["records"], what="a stuck record")
    assert [r["reference"] for r in stuck] == [running["reference"]]
    render = root.child("Rendering PDF", 300, 800, attrs={"trifle.result": "invoice-42.pdf"})
    post_json(sidecar, WORKER, render)
    wait_for(lambda: record_of(sidecar, root.span_id, "running", 4 + 3), what="a refreshed running record")
    post_json(sidecar, WORKER, root)
    done = wait_for(lambda: record_of(sidecar, root.span_id, "success"), what="the finished record")
    assert done["reference"] == running["reference"] and done["key"] == "invoices/generate"
    assert done["tags"] == ["customer.id:acme"] and "open_steps" not in done
    assert lines_of(sidecar, done["reference"]) == [
        (0, "Loading orders \u21b4"), (1, "SELECT orders \u21b4"), (1, "SELECT orders \u21b5"), (0, "Loading orders \u21b5"),
        (0, "Rendering PDF \u21b4"), (0, "Rendering PDF \u21b5"), (0, "\u21b3 invoice-42.pdf"),
    ]
    wait_for(lambda: sidecar.stat("invoices/generate") == 1, what="the default stat")
    audit = root.child("Audit log", 850, 950)  # ends after its root, exported later
    post_json(sidecar, WORKER, audit)
    wait_for(lambda: record_of(sidecar, root.span_id, "success", 9), what="the document rewritten with the late span")
    wait_for(lambda: sidecar.metrics()["trifle_otel_late_spans_total"] == 1, what="the late span counted")
    time.sleep(1.0)  # a checkpoint or two later
    assert sidecar.stat("invoices/generate") == 1 and len(sidecar.records()) == 1


def test_a_start_marker_makes_the_running_record_with_the_jobs_key(serve):
    sidecar = serve()
    root = S("run/reports.monthly", 0, 5000, kind="consumer", attrs={"trifle.key": "reports/monthly", "report.month": "2026-10"})
    marker = root.child("run/reports.monthly", 1, 1, attrs={"trifle.pending": True, "trifle.key": "reports/monthly",
                                                              "report.month": "2026-10"})
    post_json(sidecar, WORKER, marker)
    running = wait_for(lambda: record_of(sidecar, root.span_id, "running"), what="the running record")
    assert (running["key"], running["name"], running["length"]) == ("reports/monthly", "run/reports.monthly", 0)
    assert running["meta"] == {"report.month": "2026-10"}
    step = root.child("Summing", 10, 4000)
    post_json(sidecar, WORKER, step, root)
    done = wait_for(lambda: record_of(sidecar, root.span_id, "success"), what="the finished record")
    assert done["reference"] == running["reference"] and done["length"] == 2  # the marker is not a line


def test_a_web_request_and_the_job_it_enqueued_are_two_linked_executions(serve):
    sidecar = serve()
    request_span = S("POST /checkout", 0, 40, kind="server", parent="00000000000000aa")  # its caller: a browser
    enqueue = request_span.child("send_receipt publish", 5, 6, kind="producer")
    run = S("run/send_receipt", 100, 300, parent=enqueue, kind="consumer", trace_id=request_span.trace_id)
    render = run.child("Rendering receipt", 110, 200)
    post_json(sidecar, WORKER, render, run)  # the worker's exporter happened to send first
    post_json(sidecar, WEB, enqueue, request_span)
    records = {r["name"]: r for r in sidecar.wait_records(2)}
    assert set(records) == {"POST /checkout", "run/send_receipt"}
    job = records["run/send_receipt"]
    assert job["links"] == [{"type": "parent", "trace_id": run.trace_id, "span_id": enqueue.span_id}]
    assert job["service"] == "invoice-worker" and job["length"] == 2
    assert records["POST /checkout"]["length"] == 2 and records["POST /checkout"]["service"] == "shop-web"


def test_sigterm_writes_what_is_held_and_a_restart_carries_running_jobs_on(serve, tmp_path):
    home = tmp_path / "home"
    sidecar = serve(home=home, receivers={"grace": 60, "checkpoint_interval": 60})  # nothing written before the stop
    finished = [S(f"run/job {i}", 0, 10, kind="consumer", attrs={"trifle.key": "jobs/quick"}) for i in range(3)]
    post_json(sidecar, WORKER, *finished, *(job.child("step", 1, 2) for job in finished))
    root = S("run/export", 0, 20_000, kind="consumer", attrs={"trifle.key": "jobs/export"})
    first = root.child("Exporting part 1", 10, 5000)
    post_json(sidecar, WORKER, first)
    assert sidecar.records() == []
    assert sidecar.stop(signal.SIGTERM) == 0
    out = "".join(sidecar.out)
    assert "Stopped. Took 2 requests (7 spans), wrote 3 executions and 1 running records" in out
    assert "1 spans of running jobs are carried in the log to the next start" in out
    assert sorted((r["key"], r["state"]) for r in sidecar.records()) == sorted([("jobs/quick", "success")] * 3 + [
        ("invoice-worker: root span not received yet", "running")])
    assert sidecar.stat("jobs/quick") == 3
    again = serve(home=home, receivers={"grace": 0.3})
    assert "Replayed 0 requests (0 spans) and 1 spans of open executions from the log." in "".join(again.out)
    second = root.child("Exporting part 2", 5000, 19_000)
    post_json(again, WORKER, second, root)
    done = wait_for(lambda: record_of(again, root.span_id, "success"), what="the job finished after the restart")
    assert done["key"] == "jobs/export" and done["length"] == 4  # both parts
    wait_for(lambda: again.stat("jobs/export") == 1, what="its stat")
    assert again.stat("jobs/quick") == 3 and len(again.records()) == 4


# -- command line -------------------------------------------------------------------------------


def run_serve(*args: str, home) -> subprocess.CompletedProcess:
    return subprocess.run([TRIFLE, "serve", "--home", str(home), *args], capture_output=True, text=True, timeout=60)


def test_a_port_in_use_or_a_bad_address_is_one_error_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_serve("--grpc", "off", "--http", f"127.0.0.1:{port}", home=tmp_path / "h")
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} for OTLP/HTTP: ")
        assert proc.stderr.count("\n") == 1
        proc = run_serve("--grpc", f"127.0.0.1:{port}", home=tmp_path / "h")
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} for OTLP/gRPC")
    proc = run_serve("--grpc", "localhost", home=tmp_path / "h")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: invalid value for '--grpc': 'localhost' is not HOST:PORT")
    proc = run_serve("--grpc", "off", "--http", "off", home=tmp_path / "h")
    assert (proc.returncode, proc.stderr) == (1, "error: both receivers are off: give --grpc HOST:PORT or --http HOST:PORT "
                                                  "(receivers.grpc / receivers.http)\n")


def test_one_sidecar_per_home_and_ctrl_c_stops_it(serve, tmp_path):
    first = serve(home=tmp_path / "home")
    proc = run_serve("--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", home=tmp_path / "home")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "is in use by another process (each trifle-otel serve needs its own home directory)" in proc.stderr
    assert first.stop(signal.SIGINT) == 0 and "Stopped. Took 0 requests" in "".join(first.out)
    assert "".join(first.err) == ""


# -- a Node.js app with the official OpenTelemetry JS SDK ------------------------------------------

NODE_RULES = """
rules:
  - name: invoices per customer
    where:
      - name == "run/billing.invoice"
    keys:
      - billing/invoices/customer/{attributes["customer.id"]}
    values:
      count: 1
      total: attributes["invoice.total"]
  - name: e-mails
    where:
      - name == "Sending e-mail"
    keys: [billing/emails]
    values:
      count: 1
      failed: {map: status.code}
"""


@pytest.mark.parametrize("protocol", ["proto", "grpc"])
def test_a_nodejs_job_becomes_one_execution_with_nested_lines_tags_and_stats(serve, tmp_path, node, protocol):
    from test_otlp_node import NODE_DIR

    rules = tmp_path / "rules.yaml"
    rules.write_text(NODE_RULES)
    sidecar = serve(stats={"rules": str(rules)}, traces={"tag_attributes": ["customer.id", "reseller.id"]})
    url = f"http://{sidecar.http}/v1/traces" if protocol == "proto" else f"http://{sidecar.grpc}"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    job = subprocess.Popen([node, str(NODE_DIR / "job.js"), protocol, url], cwd=NODE_DIR, env=env, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = job.stdout.readline().split()
        assert started[:1] == ["started"], job.stderr.read()
        trace_id, root_id = started[1:]
        running = wait_for(lambda: record_of(sidecar, root_id, "running", 5), what="the job's running record")
        assert (running["key"], running["name"], running["trace_id"]) == ("billing/invoices", "run/billing.invoice", trace_id)
        job.stdin.write("go\n")
        job.stdin.flush()
        assert job.wait(60) == 0, job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(10)
    done = wait_for(lambda: record_of(sidecar, root_id, "success"), what="the finished execution")
    assert done["reference"] == running["reference"] and done["service"] == "billing-node"
    assert done["tags"] == ["customer.id:acme", "reseller.id:r7", "vip"]
    assert done["meta"]["invoice.total"] == 129.5
    assert done["links"] == [{"type": "parent", "trace_id": trace_id, "span_id": "00f067aa0ba902b7"}]
    lines = lines_of(sidecar, done["reference"])
    assert lines[:8] == [
        (0, "Loading invoice lines \u21b4"), (1, "SELECT invoice_lines \u21b4"), (1, "SELECT invoice_lines \u21b5"),
        (0, "Loading invoice lines \u21b5"), (0, "\u21b3 3 lines"),
        (0, "Computing totals \u21b4"), (1, "discount applied"), (1, '{"percent": 5}'),
    ]
    assert (0, "\u21b3 129.50 EUR") in lines and (0, "Sending e-mail \u21b4") in lines
    assert any(level == 1 and message == "Error: SMTP 451: try again later" for level, message in lines)
    wait_for(lambda: sidecar.stat("billing/invoices") == 1, what="the default stat")
    assert sidecar.stat("billing/invoices/customer/acme") == 1
    assert sidecar.stat("billing/invoices/customer/acme", "total") == 129.5
    assert sidecar.stat("billing/emails", "failed.error") == 1


def test_serve_also_serves_the_web_ui(serve):
    import re
    import urllib.request

    sidecar = serve("--ui", "127.0.0.1:0")
    (url,) = re.findall(r"web UI on (http://127\.0\.0\.1:\d+)/", "".join(sidecar.out))
    code, _, _ = sidecar.post(SPEC_EXAMPLE_JSON, JSON)
    assert code == 200
    (record,) = sidecar.wait_records(1)
    with urllib.request.urlopen(f"{url}/api/executions", timeout=30) as response:
        listed = orjson.loads(response.read())
    assert [r["reference"] for r in listed["records"]] == [record["reference"]]
    with urllib.request.urlopen(f"{url}/executions/{record['reference']}", timeout=30) as response:
        page = response.read().decode()
    assert "I&#39;m a server span" in page or "I'm a server span" in page
    assert sidecar.stop() == 0


def test_serve_refuses_a_ui_port_in_use_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TRIFLE, "serve", "--home", str(tmp_path / "home"), "--grpc", "off", "--http", "127.0.0.1:0",
             "--ui", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
