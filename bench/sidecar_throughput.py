"""Sidecar throughput, part by part.

(a) decode ceiling: parsing OTLP trace requests and reading every span's fields into the
    neutral span model (``trifle_otel.ingest.otlp_decode``), protobuf and JSON.  Requests
    are what the OpenTelemetry Python SDK's OTLP exporter sends: 512 spans each, jobs of one
    CONSUMER root and 5 children, ~6 attributes per span, an event on some.  This is the
    ceiling for one serve process: everything after decoding (the write-ahead log,
    assembly, translation, stores) only lowers it.  Reported per CPU second (what one
    core can do, steady when other work shares the machine) and per wall-clock second.

(b) ``trifle-otel serve`` in a subprocess (embedded store, the demo's stats rules, its own
    temporary home) fed over OTLP/HTTP by concurrent clients sending pre-encoded gzip
    protobuf requests of 512 spans: spans/s from the first request sent to the last
    execution stored (every execution in the index), the CPU the serve process used per
    span, and its peak RSS.
(c) the same over OTLP/gRPC (the clients compress with gzip).
Then (b)/(a): how much of the decode ceiling one serve process reaches.
(d) (b) again with one forward target (``forward:``, http/protobuf with gzip) pointed at
    a sink server in this process that answers 200 at once: ingest spans/s as in (b),
    and when the sink had every request; then (d)/(b), both measured in this run.
(e) (b) again with ``receivers.store_process: false``: the trace stores written by serve's
    worker thread between its cycles, not by a child process beside it; then (b)/(e).

Usage: python bench/sidecar_throughput.py [--requests 200] [--part a --part b --part c --part d --part e]
       [--served-requests 300] [--clients 6]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

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


# -- (b) and (c): serve in a subprocess ----------------------------------------------------------


def unique_copies(request, count: int) -> list[bytes]:
    """``count`` serialized copies of a request, each with its own trace and span ids (the
    ids XOR-ed with a mask per copy, so parents still match)."""
    out = []
    for n in range(count):
        copy = type(request)()
        copy.CopyFrom(request)
        trace_mask = (n + 1).to_bytes(16, "big")
        span_mask = (n + 1).to_bytes(8, "big")
        for rs in copy.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = bytes(a ^ b for a, b in zip(span.trace_id, trace_mask))
                    span.span_id = bytes(a ^ b for a, b in zip(span.span_id, span_mask))
                    if span.parent_span_id:
                        span.parent_span_id = bytes(a ^ b for a, b in zip(span.parent_span_id, span_mask))
        out.append(copy.SerializeToString())
    return out


def roots_of(request) -> int:
    return sum(1 for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans if not s.parent_span_id)


def _children(pid: int) -> list[int]:
    """serve's child processes (its store writer)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children_sum(pid: int, measure) -> float:
    """``measure`` summed over serve's child processes (gone ones count nothing)."""
    total = 0.0
    for child in _children(pid):
        try:
            total += measure(child)
        except OSError:
            pass
    return total


def _stored(index: Path) -> int:
    if not index.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trifle_traces").fetchone()[0]
    except sqlite3.Error:
        return 0


class Sink:
    """An OTLP/HTTP backend that takes everything (HTTP/1.1 keep-alive) and counts it."""

    def __init__(self) -> None:
        import http.server

        sink = self
        self.requests = 0
        self.last = 0.0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                sink.requests += 1
                sink.last = time.perf_counter()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def served(transport: str, n_requests: int, clients: int, grace: float, sink: Sink | None = None,
           store_process: bool = True) -> dict[str, float]:
    """Run serve, send ``n_requests`` requests of 512 spans from ``clients`` threads, wait
    until every execution is in the index (and, with a ``sink``, every request forwarded)."""
    base = make_request(1000)
    bodies = unique_copies(base, n_requests)
    executions = roots_of(base) * n_requests
    spans = SPANS_PER_REQUEST * n_requests
    payloads = [gzip.compress(b, 6) for b in bodies] if transport == "http" else bodies
    rules = str(resources.files("trifle_otel") / "examples" / "demo_rules.yaml")
    with tempfile.TemporaryDirectory(dir=".") as home:
        config = Path(home) / "trifle.yaml"
        config.write_text(
            f"stats:\n  rules: {rules}\ntraces:\n  tag_attributes: [customer.id, reseller.id]\n"
            f"receivers:\n  grace: {grace}\n  max_request_bytes: 67108864\n  store_process: {str(store_process).lower()}\n"
            + (f"forward:\n  - name: sink\n    endpoint: {sink.endpoint}\n" if sink is not None else "")
        )
        trifle = str(Path(sys.executable).parent / "trifle-otel")
        proc = subprocess.Popen(
            [trifle, "serve", "--config", str(config), "--home", home, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            line = proc.stdout.readline()
            if "OTLP/gRPC on " not in line:  # serve refused to start (its config, its ports)
                proc.kill()  # (nothing if it has exited already)
                proc.wait()
                raise SystemExit(f"trifle-otel serve did not start (exit code {proc.returncode}): {proc.stderr.read().strip()}")
            grpc_target = re.search(r"OTLP/gRPC on (\S+);", line).group(1)
            http_host, http_port = re.search(r"http://([\d.]+):(\d+)/v1/traces", line).groups()
            index = Path(home) / "traces.db"
            queue = list(range(n_requests))
            lock = threading.Lock()
            refused = [0]

            def take() -> int | None:
                with lock:
                    return queue.pop() if queue else None

            def http_client() -> None:
                connection = http.client.HTTPConnection(http_host, int(http_port), timeout=120)
                headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
                while (n := take()) is not None:
                    while True:
                        connection.request("POST", "/v1/traces", payloads[n], headers)
                        response = connection.getresponse()
                        response.read()
                        if response.status == 200:
                            break
                        refused[0] += 1
                        time.sleep(0.05)
                connection.close()

            def grpc_client() -> None:
                import grpc

                with grpc.insecure_channel(grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
                    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                    while (n := take()) is not None:
                        while True:
                            try:
                                export(payloads[n], compression=grpc.Compression.Gzip, timeout=120)
                                break
                            except grpc.RpcError as exc:
                                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                                    raise
                                refused[0] += 1
                                time.sleep(0.05)

            cpu0, child_cpu0 = _proc_cpu(proc.pid), _children_sum(proc.pid, _proc_cpu)
            started = time.perf_counter()
            threads = [threading.Thread(target=http_client if transport == "http" else grpc_client) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sent = time.perf_counter() - started
            while _stored(index) < executions:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {proc.stderr.read()}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            forwarded = 0.0
            if sink is not None:
                while sink.requests < n_requests:
                    if proc.poll() is not None:
                        raise RuntimeError(f"serve exited: {proc.stderr.read()}")
                    time.sleep(0.02)
                forwarded = sink.last - started
            cpu, child_cpu = _proc_cpu(proc.pid) - cpu0, _children_sum(proc.pid, _proc_cpu) - child_cpu0
            rss, child_rss = _peak_rss_mb(proc.pid), _children_sum(proc.pid, _peak_rss_mb)
        finally:
            proc.terminate()
            proc.wait(120)
    return {"spans": spans, "executions": executions, "elapsed": elapsed, "sent": sent, "cpu": cpu, "rss": rss,
            "child_cpu": child_cpu, "child_rss": child_rss, "refused": refused[0], "forwarded": forwarded}


def report_served(label: str, result: dict[str, float], grace: float, clients: int) -> float:
    rate = result["spans"] / result["elapsed"]
    print(
        f"({label}) serve over {'OTLP/gRPC' if label == 'c' else 'OTLP/HTTP'}{' forwarding to one target' if label == 'd' else ''}"
        f"{', stores written by its worker thread' if label == 'e' else ''}: "
        f"{rate:10,.0f} spans/s "
        f"({result['spans']:,} spans, {result['executions']:,} executions in {result['elapsed']:.2f} s from the first "
        f"request to the last execution stored; all sent after {result['sent']:.2f} s; grace {grace} s; "
        f"{clients} clients; {result['refused']} requests refused and sent again), "
        f"serve CPU {result['cpu'] / result['spans'] * 1e6:.1f} us/span + its store writer process "
        f"{result['child_cpu'] / result['spans'] * 1e6:.1f} us/span, peak RSS {result['rss']:.0f} MB + {result['child_rss']:.0f} MB"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests decoded per encoding in (a)")
    parser.add_argument("--served-requests", type=int, default=300, help="requests of 512 spans sent to serve in (b), (c)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients in (b), (c)")
    parser.add_argument("--grace", type=float, default=2.0, help="receivers.grace of the serve process")
    parser.add_argument("--part", choices=["a", "b", "c", "d", "e"], action="append", help="which parts to run (default: all)")
    args = parser.parse_args()
    parts = args.part or ["a", "b", "c", "d", "e"]
    ceiling = decode_ceiling(args.requests)["protobuf"] if "a" in parts else None
    rates = {}
    for part, transport in (("b", "http"), ("c", "grpc")):
        if part in parts:
            rate = report_served(part, served(transport, args.served_requests, args.clients, args.grace), args.grace, args.clients)
            rates[part] = rate
            if ceiling:
                print(f"({part})/(a): {rate / ceiling:.2f} of the protobuf decode ceiling")
    if "d" in parts:
        sink = Sink()
        try:
            result = served("http", args.served_requests, args.clients, args.grace, sink)
        finally:
            sink.close()
        rate = report_served("d", result, args.grace, args.clients)
        print(f"(d) every request forwarded {result['forwarded']:.2f} s after the first was sent "
              f"({sink.requests} requests received by the sink)")
        if "b" in rates:
            print(f"(d)/(b): {rate / rates['b']:.2f} (ingest with one forward target / without, same run)")
    if "e" in parts:
        rate = report_served("e", served("http", args.served_requests, args.clients, args.grace, store_process=False),
                             args.grace, args.clients)
        if "b" in rates:
            print(f"(b)/(e): {rates['b'] / rate:.2f} (the stores written by a child process / by serve's worker, same run)")


if __name__ == "__main__":
    main()
