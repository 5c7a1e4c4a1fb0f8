"""``trifle-otel serve`` forwarding to recording OTLP servers (HTTP and gRPC) that the
tests start: the same bytes, headers, retries as the backend asks, drops that are final,
an outage under load, and a restart with a non-empty queue."""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml

from otlp_recorder import Answer, RecordingOTLPServer
from otlp_samples import sdk_request, to_otlp_json
from serve_process import Serve, write_config

KEY = "hc-test-key"


def config_with(tmp_path: Path, *targets: dict) -> Path:
    path = write_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["forward"] = [{"retry": {"initial_interval": 0.2, "max_interval": 1.0}, "timeout": 5, **t} for t in targets]
    path.write_text(yaml.safe_dump(data))
    return path


def bodies(count: int, jobs: int = 2) -> list[bytes]:
    """Gzip protobuf requests as an SDK exporter sends them, each with its own traces."""
    return [gzip.compress(sdk_request(jobs=jobs, steps=2).SerializeToString()) for _ in range(count)]


def post_all(serve: Serve, payloads: list[bytes]) -> None:
    for body in payloads:
        code, _, answer = serve.post(body, headers={"Content-Encoding": "gzip"})
        assert code == 200, answer


def metric(serve: Serve, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return serve.metrics().get(f"trifle_otel_{name}{{{selector}}}" if labels else f"trifle_otel_{name}", 0.0)


def wait_until(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def test_http_target_gets_the_same_bytes_with_headers(tmp_path, monkeypatch):
    with RecordingOTLPServer("http") as backend:
        config = config_with(tmp_path, {"name": "hc", "endpoint": backend.endpoint,
                                        "headers": {"x-honeycomb-team": "${HC_KEY}", "x-honeycomb-dataset": "jobs"}})
        serve = Serve(tmp_path / "home", config, env={"HC_KEY": KEY}).start()
        try:
            assert any("Forwarding to hc (http/protobuf " + backend.endpoint + "/v1/traces, gzip)" in line for line in serve.out)
            payloads = bodies(5)
            post_all(serve, payloads)
            plain = sdk_request(jobs=1, steps=1)
            code, _, _ = serve.post(plain.SerializeToString())  # uncompressed: gzip added for the target
            assert code == 200
            json_request = sdk_request(jobs=1, steps=1)
            code, _, _ = serve.post(to_otlp_json(json_request), "application/json")  # converted to protobuf
            assert code == 200
            backend.wait_for(lambda b: len(b.delivered) == 7)
            got = backend.delivered
            assert [r.body for r in got[:5]] == payloads  # as received, in order
            for r in got:
                assert r.path == "/v1/traces"
                assert r.headers["x-honeycomb-team"] == KEY and r.headers["x-honeycomb-dataset"] == "jobs"
                assert r.content_type == "application/x-protobuf" and r.content_encoding == "gzip"
            assert got[5].request() == plain
            assert got[6].request() == json_request
            wait_until(lambda: metric(serve, "forward_requests_sent_total", target="hc") == 7)
            assert metric(serve, "forward_queued_requests", target="hc") == 0
        finally:
            assert serve.stop() == 0
        assert KEY not in "".join(serve.out + serve.err)


def test_grpc_target_gets_the_protobuf_message_with_metadata(tmp_path):
    with RecordingOTLPServer("grpc") as backend:
        config = config_with(tmp_path, {"name": "hc-grpc", "protocol": "grpc", "endpoint": backend.endpoint,
                                        "insecure": True, "headers": {"x-honeycomb-team": KEY}})
        serve = Serve(tmp_path / "home", config).start()
        try:
            requests = [sdk_request(jobs=2, steps=2) for _ in range(3)]
            post_all(serve, [gzip.compress(r.SerializeToString()) for r in requests])
            backend.wait_for(lambda b: len(b.delivered) == 3)
            assert [r.body for r in backend.delivered] == [r.SerializeToString() for r in requests]
            assert all(r.headers["x-honeycomb-team"] == KEY for r in backend.delivered)
            # a backend that is full for a moment says when to come back
            backend.respond(Answer(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_delay=1.0))
            post_all(serve, bodies(1))
            backend.wait_for(lambda b: len(b.delivered) == 4)
            first, second = backend.attempts[-2:]
            assert second.time - first.time >= 0.95
            wait_until(lambda: metric(serve, "forward_retries_total", target="hc-grpc") == 1)
        finally:
            assert serve.stop() == 0


def test_retry_after_is_honoured_and_a_400_is_dropped_not_retried(tmp_path):
    with RecordingOTLPServer("http") as backend:
        config = config_with(tmp_path, {"name": "hc", "endpoint": backend.endpoint})
        serve = Serve(tmp_path / "home", config).start()
        try:
            backend.respond(Answer(http_status=429, headers={"Retry-After": "2"}, message="slow down"))
            first = bodies(1)
            post_all(serve, first)
            backend.wait_for(lambda b: len(b.delivered) == 1, timeout=15)
            a, b = backend.attempts
            assert b.time - a.time >= 1.95, "attempted again before Retry-After"
            assert a.body == b.body == first[0]

            backend.respond(Answer(http_status=400, message="request has no spans we like"))
            refused, after = bodies(2)
            post_all(serve, [refused, after])
            backend.wait_for(lambda b: len(b.delivered) == 2)
            assert [r.body for r in backend.attempts[2:]] == [refused, after]  # the 400 once, never again
            assert backend.delivered[1].body == after
            wait_until(lambda: metric(serve, "forward_dropped_requests_total", target="hc", reason="http_400") == 1)
            assert metric(serve, "forward_retries_total", target="hc") == 1
            assert metric(serve, "forward_requests_sent_total", target="hc") == 2
            time.sleep(1.5)
            assert len(backend.attempts) == 4
            info = [k for k in serve.metrics() if k.startswith("trifle_otel_forward_last_error_info")]
            assert info and "http_400: request has no spans we like" in info[0]
        finally:
            assert serve.stop() == 0
        log = "".join(serve.err)
        assert "refused a request" in log and "request has no spans we like" in log


def test_target_down_for_10_s_under_load_then_everything_in_order(tmp_path):
    backend = RecordingOTLPServer("http").start()
    try:
        config = config_with(tmp_path, {"name": "hc", "endpoint": backend.endpoint})
        serve = Serve(tmp_path / "home", config).start()
        try:
            payloads = bodies(60)
            post_all(serve, payloads[:10])
            backend.wait_for(lambda b: len(b.delivered) == 10)
            backend.stop()
            started = time.monotonic()
            sender = threading.Thread(target=post_all, args=(serve, payloads[10:50]))
            sender.start()  # ingest goes on while the target is down
            sender.join(30)
            ingest_took = time.monotonic() - started
            assert ingest_took < 8, f"ingest waited for the dead target ({ingest_took:.1f} s)"
            time.sleep(max(0.0, 10 - (time.monotonic() - started)))
            assert metric(serve, "forward_failing", target="hc") == 1
            assert metric(serve, "forward_queued_requests", target="hc") >= 40
            backend.start()  # the same port
            post_all(serve, payloads[50:])
            backend.wait_for(lambda b: len(b.delivered) == 60, timeout=30)
            assert [r.body for r in backend.delivered] == payloads
            wait_until(lambda: metric(serve, "forward_failing", target="hc") == 0)
            assert metric(serve, "forward_dropped_requests_total", target="hc", reason="queue_full") == 0
            wait_until(lambda: len(serve.records()) == 120, 30, "every execution stored")  # the stores went on meanwhile
        finally:
            assert serve.stop() == 0
        log = "".join(serve.err)
        assert "forwarding to hc is failing (connection: connection refused)" in log
        assert "forwarding to hc delivers again after" in log
    finally:
        backend.stop()


def test_a_queue_left_at_stop_is_delivered_after_the_restart(tmp_path):
    backend = RecordingOTLPServer("http").start()
    backend.stop()  # down while the first serve runs
    config = config_with(tmp_path, {"name": "hc", "endpoint": backend.endpoint})
    home = tmp_path / "home"
    serve = Serve(home, config).start()
    payloads = bodies(8)
    try:
        post_all(serve, payloads)
        wait_until(lambda: metric(serve, "forward_queued_requests", target="hc") == 8)
    finally:
        assert serve.stop() == 0
    assert any("Forwarding to hc: 8 requests (" in line and "wait in its queue for the next start" in line for line in serve.out)
    assert any((home / "forward" / "hc").glob("q-*.log"))
    backend.start()
    try:
        serve = Serve(home, config).start()
        try:
            wait_until(lambda: any("(hc: 8 queued from before)" in line for line in serve.out), 5, "the start banner")
            backend.wait_for(lambda b: len(b.delivered) == 8)
            assert [r.body for r in backend.delivered] == payloads
        finally:
            assert serve.stop() == 0
        serve = Serve(home, config).start()  # nothing is sent twice after a clean stop
        try:
            time.sleep(1.0)
            assert len(backend.attempts) == 8
        finally:
            assert serve.stop() == 0
    finally:
        backend.stop()


def test_a_dead_target_does_not_hold_back_another(tmp_path):
    live = RecordingOTLPServer("http").start()
    dead = RecordingOTLPServer("http").start()
    dead.stop()
    try:
        config = config_with(tmp_path, {"name": "live", "endpoint": live.endpoint},
                             {"name": "dead", "endpoint": dead.endpoint})
        serve = Serve(tmp_path / "home", config).start()
        try:
            post_all(serve, bodies(5))
            live.wait_for(lambda b: len(b.delivered) == 5)
            wait_until(lambda: metric(serve, "forward_queued_requests", target="dead") == 5)
            started = time.monotonic()
        finally:
            assert serve.stop() == 0
        assert time.monotonic() - started < 10  # a failing target does not hold up the stop
    finally:
        live.stop()


@pytest.mark.parametrize("bad, message", [
    ({"endpoint": "api.honeycomb.io:443"}, "forward[0].endpoint must be an http:// or https:// URL"),
    ({"endpoint": "https://api.honeycomb.io", "headers": {"x-honeycomb-team": "${NO_SUCH_KEY}"}},
     "forward[0].headers.x-honeycomb-team uses ${NO_SUCH_KEY}, but the environment variable NO_SUCH_KEY is not set"),
])
def test_a_bad_target_is_one_error_line(tmp_path, bad, message):
    import subprocess

    config = config_with(tmp_path, bad)
    proc = subprocess.run(Serve(tmp_path / "home", config).command(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr


def test_sample_sidecar_config_loads(monkeypatch):
    from trifle_otel.config import load_config

    path = Path(__file__).parent.parent / "collector_config" / "trifle.yaml"
    monkeypatch.setenv("HONEYCOMB_API_KEY", "k")
    monkeypatch.setenv("TRIFLE_TOKEN", "t")
    config = load_config(path, environ={})
    (target,) = config.forward
    assert target.url() == "https://api.honeycomb.io/v1/traces" and target.headers == {"x-honeycomb-team": "k"}
    # the gRPC alternative in its comments is valid too once uncommented
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - name: honeycomb-grpc"))
    block = [line.replace("  # ", "  ", 1) for line in lines[start:] if line.startswith("  # ")]
    data = yaml.safe_load("forward:\n" + "\n".join(block) + "\n")
    from trifle_otel.config import _expand
    from trifle_otel.forward.target import parse_targets

    (grpc_target,) = parse_targets(data["forward"], "sample", _expand)
    assert grpc_target.grpc_target() == ("api.honeycomb.io:443", True)


def test_several_requests_in_flight_carry_a_slow_backend(tmp_path):
    with RecordingOTLPServer("http") as backend:
        backend.always(Answer(delay=0.25))  # 250 ms per answer: one at a time would take 5 s for 20
        config = config_with(tmp_path, {"name": "slow", "endpoint": backend.endpoint, "max_in_flight": 8})
        serve = Serve(tmp_path / "home", config).start()
        try:
            payloads = bodies(20, jobs=1)
            started = time.monotonic()
            post_all(serve, payloads)
            backend.wait_for(lambda b: len(b.delivered) == 20, timeout=20)
            took = time.monotonic() - started
            assert sorted(r.body for r in backend.delivered) == sorted(payloads)  # each once
            assert took < 3.0, f"{took:.1f} s: the requests were not sent concurrently"
            wait_until(lambda: metric(serve, "forward_queued_requests", target="slow") == 0)
        finally:
            assert serve.stop() == 0


class ByteCountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes a client sends through it."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream_port = upstream_port
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, sink, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_compression_is_on_the_wire(protocol):
    """The target's ``compression`` is what crosses the network: gzip sends a fraction of
    the bytes of none for the same (compressible) request."""
    from trifle_otel.forward.senders import make_sender
    from trifle_otel.forward.target import parse_targets
    from trifle_otel.ingest.otlp_intake import ReceivedBatch

    request = sdk_request(jobs=40, steps=5)
    record = ReceivedBatch([], request.SerializeToString()).to_record()  # received uncompressed
    sent = {}
    with RecordingOTLPServer(protocol) as backend:
        for compression in ("gzip", "none"):
            relay = ByteCountingRelay(backend.port)
            endpoint = f"http://127.0.0.1:{relay.port}"
            (target,) = parse_targets([{"name": "t", "endpoint": endpoint, "protocol": protocol,
                                        "compression": compression}], "test")
            sender = make_sender(target)
            try:
                assert sender.send(record).delivered
            finally:
                sender.close()
                relay.close()
            sent[compression] = relay.sent
        assert [r.request() for r in backend.delivered] == [request, request]
    assert sent["gzip"] * 3 < sent["none"], sent


def test_kill_9_loses_no_acknowledged_request(tmp_path):
    """Requests answered 200 are in the target's queue on disk: a killed sidecar sends them
    after its restart (at least once: some may arrive twice)."""
    with RecordingOTLPServer("http") as backend:
        backend.always(Answer(delay=0.2))  # a slow backend: a queue builds up
        config = config_with(tmp_path, {"name": "hc", "endpoint": backend.endpoint})
        home = tmp_path / "home"
        serve = Serve(home, config).start()
        payloads = bodies(30, jobs=1)
        try:
            post_all(serve, payloads)  # every one answered 200
        finally:
            serve.kill9()
        assert len({r.body for r in backend.delivered}) < 30  # the kill came with requests still queued
        backend.always(None)
        serve = Serve(home, config).start()
        try:
            backend.wait_for(lambda b: {r.body for r in b.delivered} >= set(payloads), timeout=30)
        finally:
            assert serve.stop() == 0
        delivered = [r.body for r in backend.delivered]
        assert len(delivered) - len(set(delivered)) <= 3  # in flight at the kill, or delivered after the last cursor write
