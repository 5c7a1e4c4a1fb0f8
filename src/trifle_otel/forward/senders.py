"""Sending one request to one backend and reading its answer as an :class:`Outcome`.

One sender per target, used by that target's thread only, keeping its connection open
between requests (HTTP keep-alive; one gRPC channel).  ``abort()`` may be called from
another thread to cut a request in progress short when the sidecar stops.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from typing import Mapping
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .. import __version__
from .encoding import for_grpc, for_http
from .policy import Outcome, failure_outcome, grpc_outcome, http_outcome
from .target import ForwardTarget

__all__ = ["HTTPSender", "GRPCSender", "make_sender"]

USER_AGENT = f"trifle-otel/{__version__}"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_RESPONSE_BYTES = 64 << 10  # of an answer's body read for its message


class HTTPSender:
    def __init__(self, target: ForwardTarget) -> None:
        self.target = target
        parts = urlsplit(target.url())
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers = {"User-Agent": USER_AGENT} if "user-agent" not in {k.lower() for k in target.headers} else {}
        self.headers.update(target.headers)
        self.headers["Content-Type"] = "application/x-protobuf"
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False  # the connection has carried a request already
        self._lock = threading.Lock()

    def send(self, record: bytes) -> Outcome:
        wire = for_http(record, self.target.gzip)
        headers = dict(self.headers)
        if wire.content_encoding:
            headers["Content-Encoding"] = wire.content_encoding
        try:
            try:
                response, body = self._post(wire.body, headers)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                if not self._reused:
                    raise
                # a kept-alive connection the backend had closed meanwhile: once more, afresh
                self.close()
                response, body = self._post(wire.body, headers)
        except socket.timeout:
            self.close()
            return failure_outcome("timeout", f"no answer within {self.target.timeout:g} s")
        except ssl.SSLError as exc:
            self.close()
            return failure_outcome("tls", f"TLS failed: {exc.reason or exc}")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return failure_outcome("connection", _os_message(exc))
        if 200 <= response.status < 300:
            rejected, message = _partial_success(body)
            return http_outcome(response.status, rejected_spans=rejected, message=message)
        return http_outcome(response.status, response.getheader("Retry-After"), _status_message(body, response.reason))

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self._connection()
        conn.request("POST", self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES)
        if response.will_close or not response.isclosed():  # closed by the backend, or an answer too long to read
            self.close()
        else:
            self._reused = True
        return response, data

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._conn is None:
                self._reused = False
                if self.https:
                    self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.target.timeout,
                                                             context=ssl.create_default_context())
                else:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.target.timeout)
            return self._conn

    def abort(self) -> None:
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class GRPCSender:
    def __init__(self, target: ForwardTarget) -> None:
        self.target = target
        address, tls = target.grpc_target()
        options = [("grpc.primary_user_agent", USER_AGENT), ("grpc.max_send_message_length", 64 << 20)]
        if tls:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._export = self._channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        self._metadata = tuple(target.headers.items())
        self._compression = grpc.Compression.Gzip if target.gzip else grpc.Compression.NoCompression
        self._call: grpc.Future | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def send(self, record: bytes) -> Outcome:
        message = for_grpc(record)
        future = self._export.future(message, timeout=self.target.timeout, metadata=self._metadata,
                                     compression=self._compression, wait_for_ready=False)
        with self._lock:
            self._call = future
            if self._aborted:
                future.cancel()
        try:
            response = future.result()
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = (error.details() if hasattr(error, "details") else "") or ""
            if code == grpc.StatusCode.UNAVAILABLE and not details.strip():
                details = "the backend is unavailable"
            return grpc_outcome(code.name, details, _retry_delay(error))
        except grpc.FutureCancelledError:
            return failure_outcome("cancelled", "stopped while sending")
        finally:
            with self._lock:
                self._call = None
        rejected, message_text = _partial_success(response or b"")
        return grpc_outcome("OK", message_text, rejected_spans=rejected)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        self._channel.close()


def make_sender(target: ForwardTarget) -> HTTPSender | GRPCSender:
    return GRPCSender(target) if target.protocol == "grpc" else HTTPSender(target)


def _partial_success(body: bytes) -> tuple[int, str]:
    if not body:
        return 0, ""
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except DecodeError:
        return 0, ""
    partial = response.partial_success
    return int(partial.rejected_spans), partial.error_message


def _status_message(body: bytes, reason: str) -> str:
    """An error answer's message: a ``google.rpc.Status`` body (OTLP), else its text."""
    if body:
        status = status_pb2.Status()
        try:
            status.ParseFromString(body)
            if status.message:
                return status.message
        except DecodeError:
            pass
        text = " ".join(body.decode("utf-8", "replace").split())
        if text and text.isprintable():
            return text
    return reason or ""


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The ``RetryInfo`` delay in a gRPC error's status details, if any."""
    try:
        trailers: Mapping[str, object] = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    except Exception:
        return None
    raw = trailers.get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the backend closed the connection without answering"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
