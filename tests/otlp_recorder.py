"""A recording OTLP trace server for tests, over HTTP or gRPC.

It listens on 127.0.0.1, keeps every request exactly as it arrived, and answers as the
test scripts it (errors, ``Retry-After``/RetryInfo, slowness), so a test can check what an
exporter or forwarder really sent and how it reacts to a backend's answers::

    with RecordingOTLPServer("http") as backend:
        backend.respond(Answer(429, headers={"Retry-After": "1"}))   # then success
        ... point a client at backend.endpoint ...
        backend.wait_for(lambda b: len(b.delivered) == 1)
        assert backend.spans() == [(trace_id, span_id, "job")]

Requests that are not OTLP trace exports are refused the way a backend refuses them, and
never count as delivered: another path (404), another method (405), another content type
(415), a body that does not inflate or parse (400); over gRPC, a body that does not parse
(INVALID_ARGUMENT). They are recorded in ``attempts`` and do not use up scripted answers.
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import socket
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACES_PATH = "/v1/traces"
GRPC_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
GRPC_METHOD = f"/{GRPC_SERVICE}/Export"
MAX_BODY_BYTES = 64 * 1024 * 1024
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# How an answer given for one protocol reads in the other, so one script serves both.
_GRPC_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
_HTTP_FOR_GRPC = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True)
class Answer:
    """What the server answers one request.

    Over HTTP the status is ``http_status``, or, when that is left at 200 and ``grpc_code``
    is set, the HTTP status for that code (UNAVAILABLE → 503, RESOURCE_EXHAUSTED → 429,
    INVALID_ARGUMENT → 400, ...). Error bodies are a ``google.rpc.Status`` with ``message``,
    in the request's content type. ``retry_delay`` becomes a ``Retry-After`` header (whole
    seconds as an integer) unless ``headers`` has one.

    Over gRPC the code is ``grpc_code``, or, when unset, the code for ``http_status``
    (429/502/503/504 → UNAVAILABLE, 400 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, ...).
    ``retry_delay`` attaches a ``google.rpc.RetryInfo`` to the status details in the
    ``grpc-status-details-bin`` trailer, as the OTLP specification says; the same RetryInfo
    also goes in a ``google.rpc.retryinfo-bin`` trailer, which is where the OpenTelemetry
    Python SDK's gRPC exporter looks for it. ``headers`` are sent as trailing metadata.

    ``delay`` seconds pass before the answer (a slow backend); ``stop()`` cuts it short.
    """

    http_status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    grpc_code: grpc.StatusCode | None = None
    retry_delay: float | None = None
    delay: float = 0.0

    @property
    def http_code(self) -> int:
        if self.http_status == 200 and self.grpc_code is not None:
            return _HTTP_FOR_GRPC.get(self.grpc_code, 500)
        return self.http_status

    @property
    def status_code(self) -> grpc.StatusCode:
        if self.grpc_code is not None:
            return self.grpc_code
        if 200 <= self.http_status < 300:
            return grpc.StatusCode.OK
        return _GRPC_FOR_HTTP.get(self.http_status, grpc.StatusCode.INVALID_ARGUMENT if self.http_status < 500 else grpc.StatusCode.INTERNAL)

    def succeeds(self, protocol: str) -> bool:
        if protocol == "grpc":
            return self.status_code is grpc.StatusCode.OK
        return 200 <= self.http_code < 300

    def describe(self, protocol: str) -> str:
        if protocol == "grpc":
            return self.status_code.name
        return str(self.http_code)


@dataclass
class Recorded:
    """One request as it arrived.

    HTTP: ``body`` is exactly the bytes on the wire (still compressed), ``headers`` the
    request's headers. gRPC: ``body`` is the serialized request message as grpcio hands it
    over (gRPC message compression is already undone, so ``content_encoding`` is ""), and
    ``headers`` the invocation metadata (``-bin`` values base64-encoded, as on the wire).
    Header names are lower case; repeated headers are joined with ", ".
    """

    time: float
    path: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    content_encoding: str
    answer: Answer
    protocol: str = "http"
    method: str = "POST"

    def payload(self) -> bytes:
        """The body with its content encoding undone (gzip, deflate, or none)."""
        encoding = self.content_encoding.strip().lower()
        if encoding in ("", "identity"):
            return self.body
        if encoding == "gzip":
            return gzip.decompress(self.body)
        if encoding == "deflate":
            return zlib.decompress(self.body)
        raise ValueError(f"unsupported Content-Encoding {self.content_encoding!r} (gzip, deflate or none)")

    def request(self) -> ExportTraceServiceRequest:
        """The request decoded: protobuf, or OTLP/JSON (hex trace and span ids)."""
        return _decode(self.payload(), self.content_type)

    def spans(self) -> list[tuple[str, str, str]]:
        return _spans_of(self.request())


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


_HEX_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _hex_ids_as_base64(node):
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping has base64."""
    if isinstance(node, dict):
        return {
            key: base64.b64encode(bytes.fromhex(value)).decode() if key in _HEX_ID_FIELDS and isinstance(value, str)
            else _hex_ids_as_base64(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_as_base64(item) for item in node]
    return node


def _decode(payload: bytes, content_type: str) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    media = _media_type(content_type)
    if media == JSON:
        document = _hex_ids_as_base64(json.loads(payload))
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    elif media in (PROTOBUF, "application/protobuf", "application/grpc"):
        message.ParseFromString(payload)
    else:
        raise ValueError(f"unsupported Content-Type {content_type!r} (application/x-protobuf or application/json)")
    return message


def _spans_of(request: ExportTraceServiceRequest) -> list[tuple[str, str, str]]:
    return [
        (span.trace_id.hex(), span.span_id.hex(), span.name)
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


class _GrpcStatus(collections.namedtuple("_GrpcStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    recorder: "RecordingOTLPServer"
    stopping: threading.Event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.recorder._track(self.connection, self.server.stopping)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.recorder._untrack(self.connection)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:
        self.server.recorder._handle_http(self, self.server.stopping)

    def _not_allowed(self) -> None:
        self.server.recorder._handle_http(self, self.server.stopping)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed


class RecordingOTLPServer:
    """A real OTLP/HTTP or OTLP/gRPC trace server on ``host`` that records what it gets."""

    def __init__(self, protocol: str = "http", host: str = "127.0.0.1", port: int = 0, traces_path: str = TRACES_PATH) -> None:
        if protocol in ("http", "http/protobuf", "http/json"):
            protocol = "http"
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.protocol = protocol
        self.host = host
        self.port = port
        self.traces_path = traces_path
        self._lock = threading.Lock()
        self._attempts: list[Recorded] = []
        self._delivered: list[Recorded] = []
        self._script: collections.deque[Answer] = collections.deque()
        self._always: Answer | None = None
        self._connections: set[socket.socket] = set()
        self._running = False
        self._stopping = threading.Event()
        self._http: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> "RecordingOTLPServer":
        """Listen: on a free port the first time, on the same port after a ``stop()``."""
        if self._running:
            return self
        self._stopping = threading.Event()
        if self.protocol == "http":
            self._start_http()
        else:
            self._start_grpc()
        self._running = True
        return self

    def stop(self) -> None:
        """Close the listening socket and every live connection (clients then get a refused
        connection, or UNAVAILABLE); answers being delayed are cut short. Recordings stay."""
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()  # the accept loop ends
            with self._lock:
                live = list(self._connections)
            for connection in live:
                _shut(connection)
            self._http.server_close()
            self._http_thread.join(10)
            deadline = time.monotonic() + 10
            while self._connections and time.monotonic() < deadline:
                time.sleep(0.01)
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(10)
            self._grpc = None

    def __enter__(self) -> "RecordingOTLPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def endpoint(self) -> str:
        """What a client is given: the base URL over HTTP (the client appends /v1/traces),
        ``host:port`` over gRPC."""
        if self.protocol == "http":
            return f"http://{self.host}:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` for either protocol (a gRPC client reads the scheme as insecure)."""
        return f"http://{self.host}:{self.port}"

    @property
    def traces_url(self) -> str:
        """The full OTLP/HTTP traces URL, as ``OTLPSpanExporter(endpoint=...)`` wants it."""
        return f"http://{self.host}:{self.port}{self.traces_path}"

    def __repr__(self) -> str:
        return f"<RecordingOTLPServer {self.protocol} {self.endpoint} {'running' if self._running else 'stopped'}>"

    # -- scripting ----------------------------------------------------------------------

    def respond(self, *answers: Answer) -> None:
        """The next ``len(answers)`` requests get these answers in order; then success (or
        what ``always`` set)."""
        with self._lock:
            self._script.extend(answers)

    def always(self, answer: Answer | None) -> None:
        """Every following request (after any scripted ones) gets ``answer``; None: success."""
        with self._lock:
            self._always = answer

    def reset(self) -> None:
        """Forget the recordings and the script."""
        with self._lock:
            self._attempts.clear()
            self._delivered.clear()
            self._script.clear()
            self._always = None

    def _next_answer(self) -> Answer:
        with self._lock:
            if self._script:
                return self._script.popleft()
            return self._always or Answer()

    # -- what arrived -------------------------------------------------------------------

    @property
    def attempts(self) -> list[Recorded]:
        """Every request received, whatever it was answered, in arrival order (a copy)."""
        with self._lock:
            return list(self._attempts)

    @property
    def delivered(self) -> list[Recorded]:
        """The requests answered with success, in the order they were answered (a copy)."""
        with self._lock:
            return list(self._delivered)

    def spans(self) -> list[tuple[str, str, str]]:
        """(trace id hex, span id hex, name) of every span delivered, in order."""
        return [span for recorded in self.delivered for span in recorded.spans()]

    def wait_for(self, predicate: Callable[["RecordingOTLPServer"], bool], timeout: float = 10.0) -> None:
        """Poll ``predicate(self)`` until it is true; else fail with what was received."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(f"not received within {timeout}s: {self.describe()}")
            time.sleep(0.01)

    def describe(self) -> str:
        attempts = self.attempts
        if not attempts:
            return f"nothing received on {self.endpoint}"
        start = attempts[0].time
        lines = [f"{len(attempts)} attempts, {len(self.delivered)} delivered on {self.endpoint}:"]
        for recorded in attempts[-30:]:
            try:
                what = f"{len(recorded.spans())} spans"
            except Exception as error:  # noqa: BLE001 - shown, not raised
                what = f"undecodable ({error})"
            lines.append(
                f"  +{recorded.time - start:.3f}s {recorded.method} {recorded.path} {len(recorded.body)} bytes"
                f" {recorded.content_encoding or 'uncompressed'}: {what} -> {recorded.answer.describe(recorded.protocol)}"
            )
        return "\n".join(lines)

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self._attempts.append(recorded)

    def _deliver(self, recorded: Recorded) -> None:
        with self._lock:
            self._delivered.append(recorded)

    def _undeliver(self, recorded: Recorded) -> None:
        with self._lock:
            if recorded in self._delivered:
                self._delivered.remove(recorded)

    # -- HTTP ---------------------------------------------------------------------------

    def _start_http(self) -> None:
        server = _HTTPServer((self.host, self.port), _Handler)
        server.recorder = self
        server.stopping = self._stopping
        self.port = server.server_address[1]
        self._http = server
        self._http_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                             name=f"otlp-recorder-http-{self.port}", daemon=True)
        self._http_thread.start()

    def _track(self, connection: socket.socket, stopping: threading.Event) -> None:
        with self._lock:
            self._connections.add(connection)
        if stopping.is_set():
            _shut(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _handle_http(self, handler: _Handler, stopping: threading.Event) -> None:
        arrival = time.monotonic()
        headers = _joined((name.lower(), value) for name, value in handler.headers.items())
        path = handler.path
        try:
            body = _read_body(handler, headers)
        except _BadRequest as bad:
            answer = Answer(http_status=bad.status, message=str(bad))
            self._record(Recorded(arrival, path, headers, b"", headers.get("content-type", ""),
                                  headers.get("content-encoding", ""), answer, "http", handler.command))
            handler.close_connection = True
            _send_http(handler, answer, JSON if _media_type(headers.get("content-type", "")) == JSON else PROTOBUF)
            return
        recorded = Recorded(arrival, path, headers, body, headers.get("content-type", ""),
                            headers.get("content-encoding", ""), Answer(), "http", handler.command)
        refusal = self._refusal(recorded)
        recorded.answer = refusal or self._next_answer()
        self._record(recorded)
        answer = recorded.answer
        if answer.delay and stopping.wait(answer.delay):
            handler.close_connection = True
            return
        media = JSON if _media_type(recorded.content_type) == JSON else PROTOBUF
        ok = answer.succeeds("http")
        if ok:
            self._deliver(recorded)  # before the client can see the success
        try:
            _send_http(handler, answer, media)
        except OSError:
            if ok:
                self._undeliver(recorded)
            raise

    def _refusal(self, recorded: Recorded) -> Answer | None:
        """How a backend refuses what is not an OTLP trace export (None: it is one)."""
        if recorded.method != "POST":
            return Answer(http_status=405, message=f"{recorded.method} is not allowed: POST an export request",
                          headers={"Allow": "POST"})
        if self.traces_path is not None and recorded.path.split("?", 1)[0] != self.traces_path:
            return Answer(http_status=404, message=f"no such path {recorded.path}: OTLP traces go to {self.traces_path}")
        if _media_type(recorded.content_type) not in (PROTOBUF, JSON):
            return Answer(http_status=415, message=f"unsupported Content-Type {recorded.content_type!r}: use {PROTOBUF} or {JSON}")
        try:
            recorded.request()
        except (ValueError, OSError, EOFError, zlib.error, DecodeError, json_format.ParseError) as error:
            return Answer(http_status=400, message=f"the body is not an OTLP trace export request: {error}")
        return None

    # -- gRPC ---------------------------------------------------------------------------

    def _start_grpc(self) -> None:
        handler = grpc.method_handlers_generic_handler(GRPC_SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(self._handle_grpc, request_deserializer=None, response_serializer=None),
        })
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="otlp-recorder-grpc"),
            handlers=[handler],
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_BODY_BYTES)],
        )
        port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not port:
            raise RuntimeError(f"could not listen on {self.host}:{self.port}")
        self.port = port
        server.start()
        self._grpc = server

    def _handle_grpc(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        stopping = self._stopping
        arrival = time.monotonic()
        headers = _joined(
            (key.lower(), base64.b64encode(value).decode() if isinstance(value, bytes) else value)
            for key, value in context.invocation_metadata()
        )
        recorded = Recorded(arrival, GRPC_METHOD, headers, bytes(request), "application/grpc", "", Answer(), "grpc")
        try:
            recorded.request()
            refusal = None
        except DecodeError as error:
            refusal = Answer(grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message=f"the message is not an OTLP trace export request: {error}")
        recorded.answer = refusal or self._next_answer()
        self._record(recorded)
        answer = recorded.answer
        if answer.delay and stopping.wait(answer.delay):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server stopped")
        code = answer.status_code
        if code is grpc.StatusCode.OK:
            if context.is_active():
                self._deliver(recorded)
            if answer.headers:
                context.set_trailing_metadata(tuple((key.lower(), value) for key, value in answer.headers.items()))
            return b""  # an empty ExportTraceServiceResponse
        status = status_pb2.Status(code=code.value[0], message=answer.message)
        trailers = [(key.lower(), value) for key, value in answer.headers.items()]
        if answer.retry_delay is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromNanoseconds(int(round(answer.retry_delay * 1e9)))
            status.details.add().Pack(info)
            trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
        trailers.append(("grpc-status-details-bin", status.SerializeToString()))
        context.abort_with_status(_GrpcStatus(code, answer.message, tuple(trailers)))


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _read_body(handler: _Handler, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks, size = [], 0
        while True:
            line = handler.rfile.readline(1024)
            try:
                length = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, f"bad chunk size line {line!r}") from None
            if length == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            size += length
            if size > MAX_BODY_BYTES:
                raise _BadRequest(413, f"the body is over {MAX_BODY_BYTES} bytes")
            chunks.append(handler.rfile.read(length))
            handler.rfile.readline(16)
    if "content-length" not in headers:
        if handler.command != "POST":
            return b""
        raise _BadRequest(411, "Content-Length is required")
    try:
        length = int(headers["content-length"])
    except ValueError:
        raise _BadRequest(400, f"bad Content-Length {headers['content-length']!r}") from None
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"the body is {length} bytes, over {MAX_BODY_BYTES}")
    return handler.rfile.read(length)


def _send_http(handler: _Handler, answer: Answer, media: str) -> None:
    status = answer.http_code
    if 200 <= status < 300:
        body = b"{}" if media == JSON else b""  # an empty ExportTraceServiceResponse
    else:
        message = status_pb2.Status(code=answer.status_code.value[0], message=answer.message)
        body = json_format.MessageToJson(message).encode() if media == JSON else message.SerializeToString()
    handler.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
    handler.send_header("Content-Type", media)
    handler.send_header("Content-Length", str(len(body)))
    names = {name.lower() for name in answer.headers}
    for name, value in answer.headers.items():
        handler.send_header(name, value)
    if answer.retry_delay is not None and "retry-after" not in names:
        delay = answer.retry_delay
        handler.send_header("Retry-After", str(int(delay)) if float(delay).is_integer() else f"{delay:g}")
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()  # sends the headers: with an empty body, the whole answer
    if handler.command != "HEAD" and body:
        # (no write of zero bytes: on a connection stop() has just shut, it fails after the
        # client already has its whole answer, and the request would wrongly count as not
        # delivered)
        handler.wfile.write(body)
    handler.wfile.flush()


def _joined(pairs) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


__all__ = ["Answer", "Recorded", "RecordingOTLPServer", "TRACES_PATH", "GRPC_METHOD"]
