"""``trifle-otel serve`` under faults: ``kill -9`` while clients send, then a restart; the
stores unavailable for 30 s under load.  Clients behave as OTLP exporters do: a request
that is not acknowledged (an error, a dropped connection, 503 with Retry-After) is sent
again.  What must hold: every acknowledged execution is stored, the default stat counts
each once, memory stays bounded, and /health says why requests are refused."""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from serve_process import Serve, write_config

from trifle_otel.sidecar.intake import RECENT

KEY = "jobs/durable"
T0 = time.time_ns() - 600 * 10**9


def executions_request(first: int, count: int, children: int = 2) -> bytes:
    """``count`` whole executions (a CONSUMER root and ``children`` steps) numbered from
    ``first``, as gzip protobuf; the exporter flags say no parent is remote."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for name, value in (("service.name", "durable-worker"), ("service.instance.id", "w-1")):
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = name, value
    spans = rs.scope_spans.add().spans
    for n in range(first, first + count):
        trace_id = (n + 1).to_bytes(16, "big")
        root_id = ((n + 1) << 8).to_bytes(8, "big")
        root = spans.add()
        root.trace_id, root.span_id, root.name, root.kind, root.flags = trace_id, root_id, "run/durable", 5, 0x100
        root.start_time_unix_nano, root.end_time_unix_nano = T0 + n * 1000, T0 + n * 1000 + 900
        kv = root.attributes.add()
        kv.key, kv.value.string_value = "trifle.key", KEY
        for c in range(children):
            child = spans.add()
            child.trace_id, child.span_id, child.parent_span_id = trace_id, ((n + 1) << 8 | c + 1).to_bytes(8, "big"), root_id
            child.name, child.flags = f"step {c}", 0x100
            child.start_time_unix_nano, child.end_time_unix_nano = T0 + n * 1000 + 10 * c, T0 + n * 1000 + 10 * c + 5
    return gzip.compress(request.SerializeToString(), 1)


class Client:
    """Sends numbered requests to whichever serve is current, again until acknowledged."""

    def __init__(self, per_request: int, pause: float = 0.0) -> None:
        self.per_request = per_request
        self.pause = pause  # between two requests of a thread
        self.target: Serve | None = None
        self.acked: set[int] = set()
        self.answers: dict[int, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def send(self, number: int) -> bool:
        sidecar = self.target
        if sidecar is None or not sidecar.http:
            return False
        host, port = sidecar.http.rsplit(":", 1)
        body = executions_request(number * self.per_request, self.per_request)
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
            response = connection.getresponse()
            response.read()
            connection.close()
        except (OSError, http.client.HTTPException):
            return False
        with self.lock:
            self.answers[response.status] = self.answers.get(response.status, 0) + 1
        if response.status == 200:
            with self.lock:
                self.acked.add(number)
            return True
        if response.status in (429, 503):
            time.sleep(min(float(response.getheader("Retry-After") or 1), 0.5))  # sooner than told: more load
        return False

    def run(self, numbers: range) -> None:
        for number in numbers:
            while not self.send(number):
                if self.stop.is_set():
                    return
                time.sleep(0.05)
            if self.stop.is_set():
                return
            time.sleep(self.pause)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def wait_gone(pids: list[int], timeout: float = 20) -> bool:
    """Whether these processes have exited (an orphan is reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    alive.append(pid)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_kill_9_while_clients_send_then_a_restart_stores_every_acknowledged_execution_once(tmp_path, home):
    config = write_config(tmp_path, receivers={"grace": 0.2, "checkpoint_interval": 0.3})
    client = Client(per_request=25)
    requests_per_thread = 60
    threads = [threading.Thread(target=client.run, args=(range(t * requests_per_thread, (t + 1) * requests_per_thread),))
               for t in range(4)]
    sidecars = []
    try:
        for round_ in range(2):  # two crashes, at different points of the work
            sidecar = Serve(home, config).start()
            sidecars.append(sidecar)
            client.target = sidecar
            if round_ == 0:
                for thread in threads:
                    thread.start()
            deadline = time.monotonic() + 20
            target = (round_ + 1) * len(threads) * requests_per_thread // 3
            while len(client.acked) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            while not (writers := sidecar.children()) and time.monotonic() < deadline:
                time.sleep(0.02)  # (started with the first write)
            assert writers, "serve writes its stores from a child process"
            sidecar.kill9()
            assert len(client.acked) >= target, client.answers
            assert wait_gone(writers), "the store writer outlived serve"
        sidecar = Serve(home, config).start()
        sidecars.append(sidecar)
        assert "Replayed" in "".join(sidecar.out)
        client.target = sidecar
        for thread in threads:
            thread.join(120)
        total = len(threads) * requests_per_thread
        assert len(client.acked) == total
        assert sidecar.wait_count(KEY, total * client.per_request) == {4}  # two steps each, every span once
        assert sidecar.count(KEY)[0] == total * client.per_request
        deadline = time.monotonic() + 30
        while sidecar.stat(KEY) != total * client.per_request and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sidecar.stat(KEY) == total * client.per_request == sidecar.stat(KEY, "states.success")
        assert sidecar.stop() == 0
    finally:
        client.stop.set()
        for sidecar in sidecars:
            sidecar.__exit__()


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on a fixed 127.0.0.1 port, which the test can stop and start again
    (its buckets live in this process, so they survive)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = []

    def start():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        servers.append(server)
        return server

    start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield start, servers, env
    for server in servers:
        try:
            server.stop()
        except Exception:
            pass


@pytest.mark.s3
def test_stores_unavailable_for_30_s_under_load_lose_nothing_and_memory_stays_bounded(tmp_path, home, s3_server):
    start_s3, servers, env = s3_server
    config = write_config(
        tmp_path,
        store={"data_url": "s3://trifle-outage/traces"},
        receivers={"grace": 0.2, "checkpoint_interval": 0.5},
        processor={"retry_buffer": 300},
    )
    from trifle_otel.config import load_config
    from trifle_otel.stores import open_data

    open_data("s3://trifle-outage/traces", load_config(config, environ=env)).setup([36500])
    sidecar = Serve(home, config, env=env).start()
    client = Client(per_request=10, pause=0.05)  # (moto's S3 server takes a few hundred writes a second)
    client.target = sidecar
    threads = [threading.Thread(target=client.run, args=(range(t * 100_000, (t + 1) * 100_000),)) for t in range(3)]
    health: list[tuple[int, dict]] = []
    rss: list[float] = []
    try:
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        rss_before = sidecar.rss_mb()
        servers[-1].stop()  # S3 goes away for 30 s
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            health.append(sidecar.health())
            rss.append(sidecar.rss_mb())
            time.sleep(0.5)
        refused_during = client.answers.get(503, 0)
        start_s3()
        time.sleep(5.0)  # the stores take writes again, and clients are taken again
        client.stop.set()
        for thread in threads:
            thread.join(60)
        acked = len(client.acked) * client.per_request
        sidecar.wait_count(KEY, acked)
        assert sidecar.count(KEY)[0] == acked
        deadline = time.monotonic() + 30
        while sidecar.stat(KEY) != acked and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sidecar.stat(KEY) == acked
        reasons = {h[1].get("reason", "") for h in health if h[0] == 503}
        assert any(r.startswith("stores unavailable: ") for r in reasons), reasons
        assert refused_during > 0
        # A refusal keeps /health at 503 for RECENT seconds (the backlog after the outage
        # may still have refused a request near the end): it is 200 again soon after.
        deadline = time.monotonic() + RECENT + 10
        while (now := sidecar.health())[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert now[0] == 200, now
        assert max(rss) < rss_before + 100, (rss_before, max(rss))  # (measured: +27 MB)
        assert sidecar.stop() == 0
    finally:
        client.stop.set()
        sidecar.__exit__()
        for thread in threads:
            thread.join(10)


def test_a_full_log_is_refused_with_503_and_health_says_so(tmp_path, home):
    config = write_config(tmp_path, receivers={"wal_max_bytes": 300_000, "max_request_bytes": 200_000,
                                               "checkpoint_interval": 60, "grace": 60})
    with Serve(home, config) as sidecar:
        answers = []
        for n in range(200):
            code, headers, body = sidecar.post(gzip.decompress(executions_request(n * 50, 50)))
            answers.append((code, headers.get("retry-after")))
            if code == 503:
                break
        assert answers[-1] == (503, "5") and all(code == 200 for code, _ in answers[:-1])
        code, reason = sidecar.health()
        assert code == 503 and reason["reason"].startswith("write-ahead log full (")
        assert os.path.isdir(home / "wal")
