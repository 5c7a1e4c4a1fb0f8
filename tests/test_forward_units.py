"""Forwarding's parts without a network: targets from the config, the retry policy, the
queue on disk, and the request as each target gets it."""

from __future__ import annotations

import gzip
import random
import threading
import time
import zlib

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trifle_otel.config import load_config
from trifle_otel.errors import ConfigError
from trifle_otel.forward.encoding import for_grpc, for_http, json_to_protobuf
from trifle_otel.forward.policy import backoff, grpc_outcome, http_outcome, retry_after_seconds
from trifle_otel.forward.queue import ForwardQueue
from trifle_otel.forward.target import parse_targets
from trifle_otel.ingest.otlp_decode import JSON, PROTOBUF, decode_protobuf
from trifle_otel.ingest.otlp_intake import ReceivedBatch
from trifle_otel.ingest.otlp_json import decode_json

from otlp_samples import sdk_request, to_otlp_json


_REQUEST = sdk_request(jobs=2, steps=3)


def protobuf_request() -> bytes:
    return _REQUEST.SerializeToString()


def json_request() -> bytes:
    return to_otlp_json(_REQUEST)


# -- targets --------------------------------------------------------------------------------


def test_http_endpoint_is_a_base_url_as_for_the_otel_exporters():
    (t,) = parse_targets([{"endpoint": "https://api.honeycomb.io"}], "test")
    assert t.name == "api.honeycomb.io" and t.protocol == "http/protobuf" and t.compression == "gzip"
    assert t.url() == "https://api.honeycomb.io/v1/traces"
    (t,) = parse_targets([{"endpoint": "https://collector:4318/v1/traces"}], "test")
    assert t.url() == "https://collector:4318/v1/traces"
    (t,) = parse_targets([{"endpoint": "http://gw:4318/otlp/"}], "test")
    assert t.url() == "http://gw:4318/otlp/v1/traces"


def test_grpc_endpoint_host_port_is_tls_unless_insecure_or_http_scheme():
    targets = parse_targets([
        {"name": "hc", "endpoint": "api.honeycomb.io:443", "protocol": "grpc"},
        {"name": "local", "endpoint": "127.0.0.1:4317", "protocol": "grpc", "insecure": True},
        {"name": "url", "endpoint": "http://127.0.0.1:4317", "protocol": "grpc"},
        {"name": "tls", "endpoint": "https://otel.example.com", "protocol": "grpc"},
    ], "test")
    assert [t.grpc_target() for t in targets] == [
        ("api.honeycomb.io:443", True), ("127.0.0.1:4317", False), ("127.0.0.1:4317", False), ("otel.example.com:443", True),
    ]


def test_headers_read_the_environment_and_never_show(monkeypatch, tmp_path):
    monkeypatch.setenv("HONEYCOMB_API_KEY", "hcaik_secret")
    config_file = tmp_path / "trifle.yaml"
    config_file.write_text(
        "forward:\n"
        "  - name: honeycomb\n"
        "    endpoint: https://api.honeycomb.io\n"
        "    headers:\n"
        "      x-honeycomb-team: ${HONEYCOMB_API_KEY}\n"
        "    retry: {initial_interval: 0.5, max_interval: 10}\n"
    )
    config = load_config(config_file, environ={})
    (target,) = config.forward
    assert target.headers == {"x-honeycomb-team": "hcaik_secret"}
    assert (target.initial_interval, target.max_interval) == (0.5, 10.0)
    assert "hcaik_secret" not in repr(target) and "hcaik_secret" not in repr(config)
    assert "hcaik_secret" not in target.describe()


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x"}, "forward[0]: 'endpoint' is missing"),
        ({"endpoint": "api.honeycomb.io:443"}, "must be an http:// or https:// URL for protocol http/protobuf"),
        ({"endpoint": "https://api.honeycomb.io", "protocol": "http/json"}, "forward[0].protocol must be http/protobuf or grpc"),
        ({"endpoint": "api.honeycomb.io", "protocol": "grpc"}, "must be host:port"),
        ({"endpoint": "https://x", "compresion": "gzip"}, "unknown setting 'compresion' (did you mean 'compression'?)"),
        ({"endpoint": "https://x", "compression": "zstd"}, "compression must be gzip or none"),
        ({"endpoint": "https://x", "timeout": 0}, "timeout must be a positive number of seconds"),
        ({"endpoint": "https://x", "headers": ["x-honeycomb-team"]}, "headers must be a mapping"),
        ({"endpoint": "https://x", "headers": {"content-type": "a"}}, "'content-type' is set by the forwarder itself"),
        ({"endpoint": "https://x", "headers": {"x-key": "${NOT_SET_ANYWHERE}"}}, "NOT_SET_ANYWHERE is not set"),
        ({"endpoint": "https://x", "name": "../etc"}, "name must be letters, digits"),
        ({"endpoint": "https://x", "insecure": True}, "insecure applies to grpc only"),
        ({"endpoint": "https://x", "max_queue_bytes": 1000}, "at least 1 MiB"),
        ({"endpoint": "https://x", "retry": {"initial_interval": 5, "max_interval": 1}}, "must be at least retry.initial_interval"),
    ],
)
def test_bad_targets_are_named(entry, message, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    from trifle_otel.config import _expand

    with pytest.raises(ConfigError) as err:
        parse_targets([entry], "config file t.yaml", _expand)
    assert message in str(err.value)


def test_forward_section_shape_and_duplicate_names(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("forward:\n  endpoint: https://api.honeycomb.io\n")
    with pytest.raises(ConfigError, match="section 'forward' must be a list of targets"):
        load_config(path, environ={})
    path.write_text("forward:\n  - {endpoint: 'https://a.example'}\n  - {endpoint: 'https://a.example/x'}\n")
    with pytest.raises(ConfigError, match=r"forward\[1\] and forward\[0\] are both named 'a.example'"):
        load_config(path, environ={})
    path.write_text("forwards: []\n")
    with pytest.raises(ConfigError, match="unknown section 'forwards' \\(did you mean 'forward'"):
        load_config(path, environ={})


# -- policy ---------------------------------------------------------------------------------


def test_http_answers_per_the_otlp_specification():
    assert http_outcome(200).delivered
    assert http_outcome(200, rejected_spans=3, message="bad ids").rejected_spans == 3
    for status in (429, 502, 503, 504):
        outcome = http_outcome(status, "2")
        assert outcome.action == "retry" and outcome.delay == 2.0 and outcome.reason == f"http_{status}"
    assert http_outcome(503).delay is None  # no Retry-After: the backoff decides
    for status in (400, 401, 403, 404, 413, 500, 501):
        assert http_outcome(status, "5", "unknown API key").action == "drop"
    assert http_outcome(401, message="unknown API key").message == "unknown API key"


def test_grpc_codes_per_the_otlp_specification():
    for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "OUT_OF_RANGE", "DATA_LOSS"):
        assert grpc_outcome(code).action == "retry"
    assert grpc_outcome("RESOURCE_EXHAUSTED").action == "drop"
    assert grpc_outcome("RESOURCE_EXHAUSTED", retry_delay=3.0).action == "retry"
    assert grpc_outcome("UNAVAILABLE", retry_delay=3.0).delay == 3.0
    for code in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "INTERNAL"):
        assert grpc_outcome(code).action == "drop"
    assert grpc_outcome("OK").delivered


def test_retry_after_seconds_or_http_date():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0
    assert retry_after_seconds("86400") == 300.0  # capped


def test_backoff_doubles_with_jitter_up_to_the_maximum():
    rng = random.Random(1)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        waits = [backoff(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert base * 0.5 <= min(waits) and max(waits) <= base * 1.5
        assert max(waits) - min(waits) > base * 0.5  # jittered
    assert all(backoff(40, 1.0, 30.0, rng) <= 30.0 for _ in range(100))


# -- the queue on disk ------------------------------------------------------------------------


def test_queue_is_in_order_and_resumes_after_a_restart(tmp_path):
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    for n in range(5):
        q.put(b"request %d" % n, spans=n)
    assert q.pending() == (5, 10)
    first = q.peek(0)
    assert first.payload == b"request 0" and q.peek(0) == first  # the same until done
    q.done(first)
    q.done(q.peek(0))
    q.close()
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    assert q.pending() == (3, 9)
    got = []
    while (request := q.peek(0)) is not None:
        got.append(request.payload)
        q.done(request)
    assert got == [b"request 2", b"request 3", b"request 4"]
    q.put(b"after")
    assert q.peek(0).payload == b"after"
    q.close()


def test_queue_drops_the_oldest_past_its_bound_and_counts_them(tmp_path):
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20, segment_bytes=128 << 10)
    payload = b"x" * (10 << 10)
    for _ in range(300):  # ~3 MiB into a 1 MiB queue
        q.put(payload, spans=2)
    assert q.bytes <= 1 << 20
    pending, spans = q.pending()
    dropped_requests, dropped_spans = q.dropped["queue_full"]
    assert pending + dropped_requests == 300 and spans + dropped_spans == 600
    assert dropped_requests > 150
    count = 0
    while (request := q.peek(0)) is not None:
        count += 1
        q.done(request)
    assert count == pending
    q.close()


def test_queue_skips_a_torn_tail(tmp_path):
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    q.put(b"kept", 1)
    q.put(b"torn" * 100, 1)
    q.close()
    (segment,) = sorted((tmp_path / "q").glob("q-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-50])  # a crash in the middle of the second write
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    assert q.pending() == (1, 1) and q.dropped["corrupt"][0] == 1
    assert q.peek(0).payload == b"kept"
    q.close()


def test_peek_waits_for_a_put(tmp_path):
    import threading

    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    assert q.peek(0.05) is None
    threading.Timer(0.1, q.put, args=(b"late", 1)).start()
    assert q.peek(5).payload == b"late"
    q.close()


# -- the request as each target gets it --------------------------------------------------------


def test_gzip_protobuf_goes_to_an_http_gzip_target_as_received():
    body = gzip.compress(protobuf_request())
    record = ReceivedBatch([], body, PROTOBUF, "gzip").to_record()
    wire = for_http(record, gzip=True)
    assert wire.body is body or wire.body == body
    assert wire.content_encoding == "gzip"
    plain = for_http(record, gzip=False)
    assert plain.content_encoding == "" and plain.body == protobuf_request()
    assert for_grpc(record) == protobuf_request()


def test_plain_and_deflate_bodies_are_compressed_for_a_gzip_target():
    raw = protobuf_request()
    for encoding, body in (("", raw), ("deflate", zlib.compress(raw))):
        wire = for_http(ReceivedBatch([], body, PROTOBUF, encoding).to_record(), gzip=True)
        assert wire.content_encoding == "gzip" and gzip.decompress(wire.body) == raw


def test_json_requests_become_the_same_spans_in_protobuf():
    body = json_request()
    converted = json_to_protobuf(body)
    message = ExportTraceServiceRequest()
    message.ParseFromString(converted)
    assert decode_protobuf(converted).spans == decode_json(body).spans
    record = ReceivedBatch([], body, JSON, "").to_record()
    assert for_grpc(record) == converted


def test_the_processor_says_forward_is_for_serve_only(tmp_path, caplog):
    from trifle_otel import TrifleSpanProcessor

    config = load_config(overrides={"home": str(tmp_path), "forward": [{"endpoint": "https://api.honeycomb.io"}]}, environ={})
    with caplog.at_level("WARNING", logger="trifle_otel"):
        processor = TrifleSpanProcessor(config)
        processor.shutdown()
    assert "'forward' targets are used by trifle-otel serve only" in caplog.text


def test_a_queue_of_a_target_no_longer_configured_is_named(tmp_path, caplog):
    from trifle_otel.forward import Forwarding

    (old,) = parse_targets([{"name": "old", "endpoint": "https://old.example"}], "t")
    (new,) = parse_targets([{"name": "new", "endpoint": "https://new.example"}], "t")
    first = Forwarding([old], tmp_path)  # not started: nothing is sent
    first.offer(b"request", 3)
    first.forwarders[0].queue.close()
    with caplog.at_level("WARNING", logger="trifle_otel"):
        second = Forwarding([new], tmp_path)
        second.forwarders[0].queue.close()
    assert "holds requests for a forward target no longer configured ('old')" in caplog.text


# -- the forwarder's threads against a scripted backend ------------------------------------------


class ScriptedBackend:
    """A sender that answers from a function of the payload (no network): for the window
    and queue logic alone; the real senders are tested against real servers."""

    def __init__(self, answer):
        self.answer = answer
        self.attempts: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, record: bytes):
        with self.lock:
            self.attempts.append(record)
        return self.answer(record)

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_a_head_request_dropped_at_the_bound_while_retried_lets_the_rest_through(tmp_path):
    from trifle_otel.forward.forwarder import Forwarder
    from trifle_otel.forward.policy import Outcome

    (target,) = parse_targets([{"name": "t", "endpoint": "https://x", "retry": {"initial_interval": 0.01, "max_interval": 0.02}}], "t")
    queue = ForwardQueue(tmp_path / "q", max_bytes=1 << 20, segment_bytes=64 << 10)
    backend = ScriptedBackend(lambda r: Outcome("retry", "http_504") if r.startswith(b"stuck") else Outcome("delivered"))
    forwarder = Forwarder(target, queue, [backend]).start()
    try:
        queue.put(b"stuck" + b"x" * 30_000, 1)
        _wait(lambda: len(backend.attempts) >= 2)
        for n in range(100):  # ~3 MiB: the stuck request's segment is dropped at the bound
            queue.put(b"next %03d " % n + b"y" * 30_000, 1)
        _wait(lambda: forwarder.counters.requests_sent > 0)
    finally:
        forwarder.stop()
    metrics = forwarder.metrics()
    assert metrics["dropped"]["queue_full"][0] >= 1
    assert metrics["requests_sent"] + metrics["dropped"]["queue_full"][0] + metrics["queued_requests"] >= 101


def test_several_in_flight_deliver_everything_once_and_the_cursor_stays_in_order(tmp_path):
    from trifle_otel.forward.forwarder import Forwarder
    from trifle_otel.forward.policy import Outcome

    (target,) = parse_targets([{"name": "t", "endpoint": "https://x", "max_in_flight": 4,
                                "retry": {"initial_interval": 0.01, "max_interval": 0.05}}], "t")
    queue = ForwardQueue(tmp_path / "q", max_bytes=8 << 20)
    flaky = random.Random(3)

    def answer(record: bytes):
        time.sleep(0.005)
        return Outcome("retry", "http_503") if flaky.random() < 0.2 else Outcome("delivered")

    backends = [ScriptedBackend(answer) for _ in range(4)]
    forwarder = Forwarder(target, queue, backends).start()
    try:
        for n in range(200):
            queue.put(b"request %03d" % n, 2)
        _wait(lambda: forwarder.counters.requests_sent == 200)
        _wait(lambda: queue.pending() == (0, 0))
    finally:
        forwarder.stop()
    delivered = [a for b in backends for a in b.attempts]
    assert set(delivered) == {b"request %03d" % n for n in range(200)}
    assert all(len(b.attempts) > 10 for b in backends)  # all four carried requests
    assert forwarder.counters.spans_sent == 400
    reopened = ForwardQueue(tmp_path / "q", max_bytes=8 << 20)
    assert reopened.pending() == (0, 0)
    reopened.close()


def test_a_failed_rotation_leaves_the_queue_usable(tmp_path, monkeypatch):
    import errno
    import os as os_module

    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20, segment_bytes=64 << 10)
    q.put(b"a" * 40_000, 1)
    real_open = os_module.open
    calls = {"n": 0}

    def failing_open(path, *args, **kwargs):
        if str(path).endswith(".log") and calls["n"] == 0:
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os_module, "open", failing_open)
    from trifle_otel.errors import StoreError

    with pytest.raises(StoreError, match="No space left on device"):
        q.put(b"b" * 40_000, 1)  # needs a new segment
    q.put(b"c" * 100, 1)  # the next one works
    assert [r.payload[:1] for r in _drain(q)] == [b"a", b"c"]
    q.close()


def _drain(q):
    out = []
    while (request := q.peek(0)) is not None:
        out.append(request)
        q.done(request)
    return out


def test_a_leftover_segment_older_than_the_cursor_is_removed_at_open(tmp_path):
    import shutil

    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20, segment_bytes=64 << 10)
    q.put(b"old" * 22_000, 1)
    q.put(b"new", 1)
    (first, second) = sorted((tmp_path / "q").glob("q-*.log"))
    shutil.copy(first, tmp_path / "copy")
    q.done(q.peek(0))
    q.close()
    assert not first.exists()
    shutil.copy(tmp_path / "copy", first)  # a restored old segment
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20)
    assert q.pending() == (1, 1) and not first.exists()
    assert q.peek(0).payload == b"new"
    q.close()


def test_delivered_after_being_dropped_is_not_counted_as_dropped(tmp_path):
    q = ForwardQueue(tmp_path / "q", max_bytes=1 << 20, segment_bytes=128 << 10)
    q.put(b"first", 1)
    head = q.peek(0)
    for _ in range(200):
        q.put(b"z" * 10_000, 1)
    assert not q.holds(head)
    dropped = q.dropped["queue_full"][0]
    q.done(head, delivered=True)
    assert q.dropped["queue_full"][0] == dropped - 1
    q.close()


@pytest.mark.parametrize("entry, message", [
    ({"endpoint": "https://x", "headers": {"x-key": "k€y"}}, "must be printable ASCII"),
    ({"endpoint": "a:1", "protocol": "grpc", "headers": {"x-key-bin": "a"}}, "binary gRPC metadata"),
    ({"endpoint": "http://[::1"}, "cannot be read as a URL"),
    ({"endpoint": "https://user:secret@api.example"}, "must not carry credentials"),
    ({"endpoint": "https://x", "max_in_flight": 0}, "max_in_flight must be a whole number from 1 to 64"),
])
def test_more_bad_targets(entry, message):
    with pytest.raises(ConfigError) as err:
        parse_targets([entry], "t")
    assert message in str(err.value) and "secret" not in str(err.value)


def test_default_names_are_directory_safe():
    (target,) = parse_targets([{"endpoint": "http://[::1]:4318"}], "t")
    assert target.name == "1"
    (target,) = parse_targets([{"endpoint": "https://Api.Honeycomb.io"}], "t")
    assert target.name == "api.honeycomb.io"


def test_a_target_that_is_the_sidecar_itself_is_refused():
    from trifle_otel.forward.target import forwards_to_itself

    listens = [("127.0.0.1", 4317), ("127.0.0.1", 4318)]
    targets = parse_targets([
        {"name": "a", "endpoint": "http://localhost:4318"},
        {"name": "b", "endpoint": "127.0.0.1:4317", "protocol": "grpc", "insecure": True},
        {"name": "c", "endpoint": "http://127.0.0.1:14318"},
        {"name": "d", "endpoint": "https://api.honeycomb.io"},
    ], "t")
    assert [forwards_to_itself(t, listens) for t in targets] == [True, True, False, False]
    assert forwards_to_itself(targets[0], [("0.0.0.0", 4318)])
    assert not forwards_to_itself(targets[0], [("127.0.0.1", 0)])


def test_serve_refuses_to_forward_to_itself(tmp_path):
    from trifle_otel.sidecar.server import Sidecar

    config = load_config(overrides={"home": str(tmp_path), "http_listen": "127.0.0.1:4318",
                                    "forward": [{"name": "me", "endpoint": "http://127.0.0.1:4318"}]}, environ={})
    with pytest.raises(ConfigError, match=r"forward\[0\] \(me\) points at this sidecar's own receivers"):
        Sidecar(config)


def test_the_readme_forward_example_loads(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("### Forwarding to your tracing backend", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "forward.yaml"
    path.write_text(block)
    monkeypatch.setenv("HONEYCOMB_API_KEY", "k")
    honeycomb, tempo = load_config(path, environ={}).forward
    assert honeycomb.url() == "https://api.honeycomb.io/v1/traces" and honeycomb.headers == {"x-honeycomb-team": "k"}
    assert tempo.grpc_target() == ("tempo.internal:4317", False)


def test_a_request_the_queue_cannot_take_is_counted_not_raised(tmp_path):
    from trifle_otel.errors import StoreError
    from trifle_otel.forward import Forwarding

    (target,) = parse_targets([{"name": "t", "endpoint": "https://x"}], "t")
    forwarding = Forwarding([target], tmp_path)  # not started: nothing is sent
    (forwarder,) = forwarding.forwarders

    def full(payload, spans=0):
        raise StoreError("cannot write to the forward queue: No space left on device")

    forwarder.queue.put = full
    forwarding.offer(b"request", 3)
    metrics = forwarder.metrics()
    assert metrics["dropped"]["queue_write_failed"] == [1, 3]
    assert "No space left on device" in metrics["last_error"]
    forwarder.queue.close()
