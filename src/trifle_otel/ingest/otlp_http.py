"""The OTLP/HTTP receiver: ``POST /v1/traces``, ``GET /health``, ``GET /metrics``.

Built as the OTLP specification and the OTel Collector answer, so that every exporter's
retry logic does the right thing:

- ``application/x-protobuf`` and ``application/json`` bodies, ``gzip`` (and ``deflate``)
  content encoding; the answer uses the request's content type: an
  ``ExportTraceServiceResponse`` with ``partial_success`` when spans were refused (clients
  do not retry those), errors as a ``google.rpc.Status`` whose message says what is wrong.
- 405 for another method, 415 for another content type or encoding, 401 for a missing or
  wrong bearer token, 400 for a body that cannot be decoded, 413 for a body over
  ``max_request_bytes`` — as received, as declared by ``Content-Length``, or while
  inflating, so a gzip bomb costs at most that many bytes —, 429/503 with ``Retry-After``
  when the intake refuses (the only statuses OTLP clients retry), 500 only for a fault of
  ours.
- At most ``max_concurrent_requests`` requests are read and processed at once; past that
  the answer is 503 with ``Retry-After`` before the body is read, which bounds memory at
  about ``max_concurrent_requests × max_request_bytes``.
- Decoding and the intake run in worker threads, off the event loop: an intake that waits
  for a disk sync (the write-ahead log) holds only its own request, and concurrent
  requests share those syncs.
- ``/health`` and ``/metrics`` need no token (probes and scrapers; they reveal counts only).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from typing import Any

import orjson
import uvicorn
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ConfigError, OTLPDecodeError, OTLPTooLarge, WALFull
from .metrics import CONTENT_TYPE_LATEST, ReceiverMetrics
from .otlp_decode import JSON, PROTOBUF, decode_request, inflate
from .otlp_intake import (
    SUPPORTED_TYPES,
    Admission,
    Intake,
    ReceivedBatch,
    bearer_ok,
    content_encoding,
    early_refusal,
    media_type,
)

__all__ = ["create_http_app", "HTTPServer", "DEFAULT_MAX_REQUEST_BYTES"]

logger = logging.getLogger("trifle_otel")

DEFAULT_MAX_REQUEST_BYTES = 16 << 20
TRANSPORT = "http"

_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}


class _Refusal(Exception):
    def __init__(self, status: int, message: str, reason: str, retry_after: float | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.retry_after = retry_after
        self.headers = headers or {}


class _Receiver:
    def __init__(
        self,
        intake: Intake,
        max_request_bytes: int,
        token: str | None,
        metrics: ReceiverMetrics,
        max_concurrent_requests: int,
    ) -> None:
        self.intake = intake
        self.max_request_bytes = max_request_bytes
        self.token = token or None
        self.metrics = metrics
        self.max_concurrent_requests = max_concurrent_requests
        self.in_flight = 0

    # -- POST /v1/traces ---------------------------------------------------------------------

    async def traces(self, request: Request) -> Response:
        content_type = media_type(request.headers.get("content-type"))
        answer_type = PROTOBUF if content_type == PROTOBUF else JSON
        try:
            if request.method != "POST":
                raise _Refusal(405, f"{request.method} is not allowed on /v1/traces: send POST", "method", headers={"Allow": "POST"})
            if not bearer_ok(request.headers.get("authorization"), self.token):
                raise _Refusal(
                    401,
                    "missing or wrong bearer token: send the header 'Authorization: Bearer <receivers.auth.token>'",
                    "unauthenticated",
                    headers={"WWW-Authenticate": 'Bearer realm="trifle-otel"'},
                )
            if content_type not in SUPPORTED_TYPES:
                raise _Refusal(
                    415,
                    f"unsupported content type {content_type or '(none)'!r}: send application/x-protobuf or application/json",
                    "content_type",
                )
            encoding = content_encoding(request.headers.get("content-encoding"))
            if encoding is None:
                raise _Refusal(
                    415,
                    f"unsupported content encoding {request.headers.get('content-encoding')!r}: send gzip, deflate or none",
                    "content_encoding",
                )
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_request_bytes:
                raise _Refusal(
                    413,
                    f"the request body is {int(declared):,} bytes, over the limit of {self.max_request_bytes:,} bytes",
                    "too_large",
                )
            if self.in_flight >= self.max_concurrent_requests:
                raise _Refusal(503, "too many requests in progress; retry later", "busy", retry_after=1.0)
            early = early_refusal(self.intake, int(declared) if declared and declared.isdigit() else 0)
            if early is not None:
                raise _Refusal(early.status, early.message, early.reason, retry_after=early.retry_after)
            self.in_flight += 1
            try:
                body = await self._read_body(request)
                status, payload, headers = await run_in_threadpool(self._process, body, content_type, encoding)
            finally:
                self.in_flight -= 1
        except _Refusal as refusal:
            return self._refusal(refusal, answer_type)
        except ClientDisconnect:
            self.metrics.request(TRANSPORT, "disconnected")
            return Response(status_code=400)
        self.metrics.request(TRANSPORT, status)
        return Response(payload, status_code=status, media_type=answer_type, headers=headers)

    async def _read_body(self, request: Request) -> bytes:
        """The body as received, refused as soon as it passes the limit (also when no
        Content-Length was sent: chunked transfer)."""
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise _Refusal(413, f"the request body is over the limit of {self.max_request_bytes:,} bytes", "too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _process(self, body: bytes, content_type: str, encoding: str) -> tuple[int, bytes, dict[str, str]]:
        """Inflate, decode, hand to the intake (a worker thread)."""
        try:
            decoded = decode_request(inflate(body, encoding, self.max_request_bytes), content_type)
        except OTLPTooLarge as exc:
            raise _Refusal(413, str(exc), "too_large") from None
        except OTLPDecodeError as exc:
            raise _Refusal(400, str(exc), "invalid") from None
        self.metrics.refused(TRANSPORT, "invalid_span", decoded.rejected_spans)
        if not decoded.spans:  # an empty request (or nothing valid in it) is a success
            return 200, _success(content_type, decoded.rejected_spans, decoded.message), {}
        batch = ReceivedBatch(
            decoded.spans, body, content_type, encoding, TRANSPORT, decoded.rejected_spans, decoded.message
        )
        try:
            admission = self.intake.accept(batch)
        except WALFull as exc:
            admission = Admission.refuse("wal_full", str(exc), retry_after=5.0, status=503)
        except Exception:
            logger.exception("the OTLP intake failed on a request of %d spans", len(decoded.spans))
            raise _Refusal(500, "internal error while taking the spans (see the sidecar's log)", "internal") from None
        if not admission.accepted:
            self.metrics.refused(TRANSPORT, admission.reason or "refused", len(decoded.spans))
            raise _Refusal(admission.status, admission.message or "the sidecar cannot take spans now; retry later",
                           admission.reason, retry_after=admission.retry_after)
        self.metrics.received(TRANSPORT, len(decoded.spans) - admission.rejected_spans)
        self.metrics.refused(TRANSPORT, "rejected", admission.rejected_spans)
        rejected = decoded.rejected_spans + admission.rejected_spans
        message = "; ".join(m for m in (decoded.message, admission.error_message) if m)
        return 200, _success(content_type, rejected, message), {}

    def _refusal(self, refusal: _Refusal, answer_type: str) -> Response:
        self.metrics.request(TRANSPORT, refusal.status)
        headers = dict(refusal.headers)
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(refusal.retry_after)))
        body = _status(refusal.status, refusal.message, answer_type)
        return Response(body, status_code=refusal.status, media_type=answer_type, headers=headers)

    # -- GET /health, GET /metrics -----------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            reason = self.intake.health()
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            reason = f"health check failed: {exc}"
        if reason:
            return Response(orjson.dumps({"status": "refusing", "reason": reason}), 503, media_type=JSON)
        return Response(orjson.dumps({"status": "ok"}), 200, media_type=JSON)

    async def scrape(self, request: Request) -> Response:
        payload = await run_in_threadpool(self.metrics.render)
        return Response(payload, 200, media_type=CONTENT_TYPE_LATEST)


def _success(content_type: str, rejected: int, message: str) -> bytes:
    if content_type == JSON:
        if not rejected and not message:
            return b"{}"
        return orjson.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response.SerializeToString()


def _status(http_status: int, message: str, content_type: str) -> bytes:
    code = _RPC_CODES.get(http_status, code_pb2.UNKNOWN)
    if content_type == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString()
    return orjson.dumps({"code": code, "message": message})


def create_http_app(
    intake: Intake,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    token: str | None = None,
    metrics: ReceiverMetrics | None = None,
    max_concurrent_requests: int = 64,
) -> Starlette:
    """The ASGI app of the OTLP/HTTP receiver.  Pass the same ``metrics`` to the gRPC
    receiver so ``/metrics`` shows both."""
    receiver = _Receiver(intake, max_request_bytes, token, metrics or ReceiverMetrics(intake.metrics), max_concurrent_requests)
    app = Starlette(
        routes=[
            Route("/v1/traces", receiver.traces, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/health", receiver.health, methods=["GET"]),
            Route("/metrics", receiver.scrape, methods=["GET"]),
        ]
    )
    app.state.receiver = receiver
    return app


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """A bound, listening TCP socket, or a ConfigError saying which address failed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}") from None


class HTTPServer:
    """Runs an ASGI app with uvicorn in a background thread: ``start()`` returns once it
    listens (port 0 picks a free port, see ``port``), ``stop()`` lets requests in progress
    finish and returns."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 4318, *, what: str = "OTLP/HTTP") -> None:
        self.app, self.host, self.requested_port, self.what = app, host, port, what
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None, "not started"
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "HTTPServer":
        self._socket = listen_socket(self.host, self.requested_port, self.what)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"trifle-otel {self.what}", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                self._socket.close()
                raise ConfigError(f"the {self.what} server on {self.host}:{self.port} failed to start: {self._error}")
            if waited >= timeout:
                self.stop()
                raise ConfigError(f"the {self.what} server on {self.host}:{self.port} did not start within {timeout} s")
            self._thread.join(0.01)
            waited += 0.01
        return self

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])  # type: ignore[union-attr,list-item]
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            logger.exception("the %s server stopped", self.what)

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> "HTTPServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
