"""Scale-out: two ``trifle-otel serve`` processes (each its own home, so its own write-ahead
log) writing ONE set of stores, fed the way a gateway collector's loadbalancing exporter
feeds them: each trace routed by the CRC32 of its trace id on a consistent-hash ring. Every
execution must be stored exactly once, with all its steps, and the stats must be exact.

The ring is the loadbalancing exporter's, read in open-telemetry/opentelemetry-collector-contrib,
exporter/loadbalancingexporter/:
- consistent_hashing.go (commit 9d1b9151d5b56ec9555e8672b37868140ae466c0): 36,000 positions
  (`maxPositions`); each endpoint gets `defaultWeight` = 100 positions, position i being
  CRC32-IEEE(endpoint bytes + the byte i) mod 36,000, a position already taken being skipped
  (endpoints in the resolver's order); the items sorted by position; an identifier goes to
  the first item at or after CRC32-IEEE(identifier) mod 36,000, wrapping to the first item.
- trace_exporter.go (commit 4660f9e32e4474018bc76c1ddfae5930c9788941): for routing_key
  traceID the identifier is the 16 bytes of the trace id.
- resolver_static.go (commit 1556b8a4aca764f4be2b798c5ccd7ada3ac8e687): the static resolver
  sorts its hostnames before the ring is built.
consistent_hashing_test.go (commit dcbb063cd0b16658e44badeb2f5cf3a0f81e0018) has expected
values, checked below against this implementation.
"""

from __future__ import annotations

import bisect
import queue
import random
import sqlite3
import threading
import time
import zlib
from collections import Counter, defaultdict
from urllib.parse import quote

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serve_process import Serve, write_config

# -- the loadbalancing exporter's ring -------------------------------------------------------

MAX_POSITIONS = 36_000  # consistent_hashing.go: maxPositions
DEFAULT_WEIGHT = 100  # consistent_hashing.go: defaultWeight


def positions_for(endpoint: str, points: int) -> list[int]:
    """positionsFor: CRC32 of the endpoint's bytes followed by the byte i, for i < points."""
    return [zlib.crc32(endpoint.encode() + bytes([i & 0xFF])) % MAX_POSITIONS for i in range(points)]


def positions_for_endpoints(endpoints: list[str], weight: int) -> list[tuple[int, str]]:
    """positionsForEndpoints: the first endpoint to claim a position keeps it; sorted."""
    taken: set[int] = set()
    items = []
    for endpoint in endpoints:
        for position in positions_for(endpoint, weight):
            if position not in taken:
                taken.add(position)
                items.append((position, endpoint))
    return sorted(items)


class HashRing:
    """newHashRing + endpointFor."""

    def __init__(self, endpoints: list[str], weight: int = DEFAULT_WEIGHT) -> None:
        self.items = positions_for_endpoints(endpoints, weight)
        self.positions = [position for position, _ in self.items]

    def find(self, position: int) -> tuple[int, str]:
        """findEndpoint/bsearch: the first item at or after the position, else the first."""
        return self.items[bisect.bisect_left(self.positions, position) % len(self.items)]

    def endpoint_for(self, identifier: bytes) -> str:
        return self.find(zlib.crc32(identifier) % MAX_POSITIONS)[1]


def static_resolver_ring(hostnames: list[str]) -> HashRing:
    return HashRing(sorted(hostnames))  # resolver_static.go sorts


def trace_id_bytes(trace_id: int) -> bytes:
    return trace_id.to_bytes(16, "big")  # the trace id's 16 bytes, as routing_key: traceID hashes them


def test_the_ring_gives_the_loadbalancing_exporters_own_expected_values():
    # consistent_hashing_test.go: TestPositionsForEndpoints ("Multiple Endpoints", weight 5)
    assert positions_for_endpoints(["endpoint-1", "endpoint-2"], 5) == [
        (1401, "endpoint-1"), (4175, "endpoint-1"), (10240, "endpoint-2"), (14133, "endpoint-1"),
        (15002, "endpoint-2"), (17836, "endpoint-1"), (21263, "endpoint-2"), (21667, "endpoint-1"),
        (26806, "endpoint-2"), (27020, "endpoint-2"),
    ]
    assert positions_for_endpoints(["endpoint-1", "endpoint-1"], 5) == positions_for_endpoints(["endpoint-1"], 5)
    # TestNewHashRing, TestEndpointFor
    ring = HashRing(["endpoint-1", "endpoint-2"])
    assert len(ring.items) == 2 * DEFAULT_WEIGHT
    assert ring.endpoint_for(bytes([1, 2, 0, 0])) == "endpoint-1"
    assert ring.endpoint_for(bytes([128, 128, 0, 0])) == "endpoint-2"
    assert ring.endpoint_for(b"ad-service-7") == "endpoint-1"
    assert ring.endpoint_for(b"get-recommendations-1") == "endpoint-2"
    # TestBinarySearch
    ring.items = [(p, str(p)) for p in (14, 25, 33, 47, 56, 121, 134, 158, 240, 270, 350)]
    ring.positions = [p for p, _ in ring.items]
    assert [ring.find(p)[0] for p in (85, 14, 351, 270, 271)] == [121, 14, 14, 270, 350]
    # The static resolver's list order does not change the routing.
    a = static_resolver_ring(["b:4317", "a:4317", "c:4317"])
    b = static_resolver_ring(["c:4317", "b:4317", "a:4317"])
    ids = [random.Random(7).randbytes(16) for _ in range(200)]
    assert [a.endpoint_for(i) for i in ids] == [b.endpoint_for(i) for i in ids]


# -- two sidecars, one set of stores --------------------------------------------------------

JOBS = 300
KEY = "scale/job"
RULES = """\
rules:
  - name: items per job
    where:
      - name == "run/scale.job"
    keys: [scale/items]
    values:
      count: 1
      items: attributes["items"]
  - name: steps
    where:
      - name matches "^step "
    keys: [scale/steps]
    values:
      count: 1
"""


def make_jobs(jobs: int, seed: int = 11):
    """Finished SDK spans of ``jobs`` executions: a CONSUMER root with 1-3 steps, each with
    0-2 queries inside and some events; every 10th root fails. Returns the spans (in the
    order they ended, as an SDK exports them) and what each execution must come out as."""
    rnd = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "scale-worker", "service.instance.id": "w1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scale.jobs")
    expected = {}
    for job in range(jobs):
        items = rnd.randint(1, 20)
        steps = queries = events = 0
        with tracer.start_as_current_span("run/scale.job", kind=trace_api.SpanKind.CONSUMER,
                                          attributes={"trifle.key": KEY, "items": items, "job": job}) as root:
            for step in range(rnd.randint(1, 3)):
                steps += 1
                with tracer.start_as_current_span(f"step {step}") as span:
                    for query in range(rnd.randint(0, 2)):
                        queries += 1
                        with tracer.start_as_current_span(f"query {query}"):
                            pass
                    if rnd.random() < 0.5:
                        events += 1
                        span.add_event("checked", {"rows": queries})
            if job % 10 == 0:
                root.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "job failed"))
        context = root.get_span_context()
        reference = format(context.span_id, "016x") + format(context.trace_id, "032x")
        expected[reference] = {
            "trace_id": context.trace_id, "items": items, "steps": steps,
            "state": "error" if job % 10 == 0 else "success",
            # a begin and an end line per step and query, two per event (its name, its
            # attributes), one for the root's failure
            "length": 2 * (steps + queries + events) + (1 if job % 10 == 0 else 0),
        }
    provider.shutdown()
    return list(exporter.get_finished_spans()), expected


def route_and_send(spans, sidecars: dict[str, Serve], batch: int = 256) -> dict[str, Counter]:
    """What a gateway does: batches of spans as they ended, each split by the ring into one
    request per sidecar, sent by that sidecar's own exporter (so a trace's spans can reach
    its sidecar over several requests, children before their root). Returns the traces and
    spans sent to each endpoint, and under "split" the traces sent over more than one request."""
    ring = static_resolver_ring(list(sidecars))
    queues = {endpoint: queue.Queue() for endpoint in sidecars}
    sent = {endpoint: Counter() for endpoint in sidecars} | {"split": Counter()}
    failures: list[str] = []

    def sender(endpoint: str) -> None:
        exporter = HTTPSpanExporter(endpoint=f"http://{sidecars[endpoint].http}/v1/traces",
                                    compression=HTTPCompression.Gzip, timeout=30)
        try:
            while (request := queues[endpoint].get()) is not None:
                if exporter.export(request) != SpanExportResult.SUCCESS:
                    failures.append(f"{endpoint}: an export failed")
        finally:
            exporter.shutdown()

    threads = [threading.Thread(target=sender, args=(endpoint,)) for endpoint in sidecars]
    for thread in threads:
        thread.start()
    traces = {endpoint: set() for endpoint in sidecars}
    requests_of_trace = defaultdict(set)
    for start in range(0, len(spans), batch):
        per_endpoint = defaultdict(list)
        for span in spans[start:start + batch]:
            per_endpoint[ring.endpoint_for(trace_id_bytes(span.context.trace_id))].append(span)
        for endpoint, request in per_endpoint.items():
            queues[endpoint].put(request)
            sent[endpoint]["spans"] += len(request)
            traces[endpoint].update(span.context.trace_id for span in request)
            for span in request:
                requests_of_trace[span.context.trace_id].add(start)
    for endpoint in sidecars:
        queues[endpoint].put(None)
    for thread in threads:
        thread.join(60)
    assert failures == []
    for endpoint in sidecars:
        sent[endpoint]["traces"] = len(traces[endpoint])
    sent["split"]["traces"] = sum(1 for starts in requests_of_trace.values() if len(starts) > 1)
    return sent


def wait_for_records(index, count: int, sidecars, timeout: float = 60) -> None:
    """Until the shared index holds ``count`` finished records (it is made by the first write)."""
    deadline, n = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30) as conn:
                (n,) = conn.execute("SELECT count(*) FROM trifle_traces WHERE state != 'running'").fetchone()
        except sqlite3.OperationalError:  # not made yet
            n = 0
        if n >= count:
            return
        time.sleep(0.2)
    said = "".join(line for sidecar in sidecars for line in sidecar.err)[-3000:]
    raise AssertionError(f"{n} finished records, expected {count}; the sidecars said: {said}")


@pytest.fixture
def two_sidecars(tmp_path):
    shared = tmp_path / "stores"
    shared.mkdir()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = write_config(
        tmp_path,
        store={name: "sqlite://" + quote(str(shared / f"{name.split('_')[0]}.db"))
               for name in ("index_url", "data_url", "stats_url")},
        stats={"rules": str(rules)},
    )
    started = []
    try:
        for name in ("a", "b"):
            started.append(Serve(tmp_path / f"home-{name}", config).start())
        yield started, shared
    finally:
        for sidecar in started:
            sidecar.__exit__()


def test_two_sidecars_routed_by_trace_id_store_each_execution_once_with_exact_stats(two_sidecars):
    (a, b), shared = two_sidecars
    assert a.home != b.home and a.store_config().resolved_index_url() == b.store_config().resolved_index_url()
    spans, expected = make_jobs(JOBS)
    # The ring is made of the sidecars' gRPC addresses, as a gateway's static resolver lists
    # them; the requests go over OTLP/HTTP (protobuf, gzip) to the same sidecars.
    sidecars = {a.grpc: a, b.grpc: b}
    sent = route_and_send(spans, sidecars)
    assert sent["split"]["traces"] > 0  # some executions reached their sidecar in pieces
    for endpoint, sidecar in sidecars.items():
        assert sent[endpoint]["traces"] > 0, f"the ring sent no trace to {endpoint}: {dict(sent)}"
        assert sent[endpoint]["traces"] + sum(sent[e]["traces"] for e in sidecars if e != endpoint) == JOBS
        metrics = sidecar.metrics()
        assert metrics['trifle_otel_spans_received_total{transport="http"}'] == sent[endpoint]["spans"]

    wait_for_records(shared / "index.db", JOBS, sidecars.values())
    assert a.stop() == 0 and b.stop() == 0, "".join(a.err + b.err)[-3000:]

    with sqlite3.connect(f"file:{shared / 'index.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT reference, key, state, json_extract(record, '$.length'), json_extract(record, '$.parts') "
            "FROM trifle_traces").fetchall()
    references = [row[0] for row in rows]
    assert len(rows) == JOBS and len(set(references)) == JOBS  # nothing else: no stray running records
    assert set(references) == set(expected)
    for reference, key, state, length, parts in rows:
        want = expected[reference]
        assert (key, state, length, parts) == (KEY, want["state"], want["length"], 1), reference
    with sqlite3.connect(f"file:{shared / 'data.db'}?mode=ro", uri=True) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM trifle_data")]
    data_parts = Counter(path.split("/")[-2] for path in paths if path.endswith("/data_1.json"))
    assert data_parts == Counter(set(expected))  # one data part per execution, each once

    failed = sum(1 for want in expected.values() if want["state"] == "error")
    assert a.stat(KEY) == JOBS
    assert a.stat(KEY, "states.success") == JOBS - failed
    assert a.stat(KEY, "states.error") == failed
    assert a.stat(KEY, "duration.count") == JOBS
    assert a.stat("scale/items") == JOBS
    assert a.stat("scale/items", "items") == sum(want["items"] for want in expected.values())
    assert a.stat("scale/steps") == sum(want["steps"] for want in expected.values())
