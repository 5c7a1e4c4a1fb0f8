"""The OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with a generic handler that receives the request's raw bytes
(the service and method names come from opentelemetry-proto's generated descriptor)
rather than through the generated servicer, whose deserializer would parse the message
before our code runs: a malformed message would then come back INTERNAL ("exception
deserializing request") instead of INVALID_ARGUMENT with what is wrong, invalid UTF-8
could not be repaired, and the exact bytes — what the write-ahead log keeps and a
forwarder sends on — would be gone.

Answers, as OTLP clients expect them:

- OK with ``partial_success`` when spans were refused for good;
- INVALID_ARGUMENT for a message that cannot be decoded (not retried);
- RESOURCE_EXHAUSTED from grpcio itself for a message over ``max_request_bytes``
  (``grpc.max_receive_message_length``, checked on the decompressed message; without
  RetryInfo, so clients do not retry it — such requests never reach this code and are
  not in the receiver's metrics);
- UNAVAILABLE with ``RetryInfo`` when the intake refuses (backpressure), carried both in
  the standard ``grpc-status-details-bin`` trailer (a ``google.rpc.Status`` with the
  RetryInfo in its details, read by the Go and Java exporters and the Collector) and in
  ``google.rpc.retryinfo-bin`` (read by the Python exporter);
- UNAUTHENTICATED when a token is configured and ``authorization: Bearer <token>``
  metadata is missing or wrong.

gzip-compressed requests are inflated by grpcio.  Handlers run in a thread pool, so
concurrent requests share the write-ahead log's syncs.
"""

from __future__ import annotations

import collections
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ..errors import ConfigError, OTLPDecodeError, WALFull
from .metrics import ReceiverMetrics
from .otlp_decode import PROTOBUF, decode_protobuf
from .otlp_http import DEFAULT_MAX_REQUEST_BYTES
from .otlp_intake import Admission, Intake, ReceivedBatch, bearer_ok, early_refusal

__all__ = ["GRPCServer", "SERVICE", "METHOD"]

logger = logging.getLogger("trifle_otel")

_SERVICE_DESCRIPTOR = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
SERVICE = _SERVICE_DESCRIPTOR.full_name  # opentelemetry.proto.collector.trace.v1.TraceService
METHOD = _SERVICE_DESCRIPTOR.methods_by_name["Export"].name
TRANSPORT = "grpc"
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


class GRPCServer:
    """A grpcio server with the trace Export method.  ``start()`` binds (port 0 picks a free
    port, see ``port``); ``stop()`` lets calls in progress finish within ``grace``."""

    def __init__(
        self,
        intake: Intake,
        host: str = "127.0.0.1",
        port: int = 4317,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        token: str | None = None,
        metrics: ReceiverMetrics | None = None,
        max_workers: int = 16,
    ) -> None:
        self.intake = intake
        self.host, self.requested_port = host, port
        self.max_request_bytes = max_request_bytes
        self.token = token or None
        self.metrics = metrics or ReceiverMetrics(intake.metrics)
        self.max_workers = max_workers
        self._server: grpc.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    def start(self) -> "GRPCServer":
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="trifle-otel OTLP/gRPC"),
            options=[
                ("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", 4 << 20),
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # raw bytes in and out
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        address = f"[{self.host}]:{self.requested_port}" if ":" in self.host else f"{self.host}:{self.requested_port}"
        try:
            self._port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address} for OTLP/gRPC: {exc}") from None
        if not self._port:
            raise ConfigError(f"cannot listen on {address} for OTLP/gRPC (address in use or not available)")
        server.start()
        self._server = server
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)
            self._server = None

    def __enter__(self) -> "GRPCServer":
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the method ------------------------------------------------------------------------

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if self.token is not None:
            metadata = dict(context.invocation_metadata() or ())
            if not bearer_ok(metadata.get("authorization"), self.token):
                self._abort(context, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send the metadata 'authorization: Bearer <receivers.auth.token>'")
        early = early_refusal(self.intake, len(body))
        if early is not None:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, early.message, retry_after=early.retry_after)
        try:
            decoded = decode_protobuf(body)
        except OTLPDecodeError as exc:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.metrics.refused(TRANSPORT, "invalid_span", decoded.rejected_spans)
        if not decoded.spans:
            self.metrics.request(TRANSPORT, "OK")
            return _response(decoded.rejected_spans, decoded.message)
        batch = ReceivedBatch(decoded.spans, body, PROTOBUF, "", TRANSPORT, decoded.rejected_spans, decoded.message)
        try:
            admission = self.intake.accept(batch)
        except WALFull as exc:
            admission = Admission.refuse("wal_full", str(exc), retry_after=5.0, status=503)
        except Exception:
            logger.exception("the OTLP intake failed on a request of %d spans", len(decoded.spans))
            self._abort(context, grpc.StatusCode.INTERNAL, "internal error while taking the spans (see the sidecar's log)")
        if not admission.accepted:
            self.metrics.refused(TRANSPORT, admission.reason or "refused", len(decoded.spans))
            self._abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                admission.message or "the sidecar cannot take spans now; retry later",
                retry_after=admission.retry_after,
            )
        self.metrics.received(TRANSPORT, len(decoded.spans) - admission.rejected_spans)
        self.metrics.refused(TRANSPORT, "rejected", admission.rejected_spans)
        self.metrics.request(TRANSPORT, "OK")
        message = "; ".join(m for m in (decoded.message, admission.error_message) if m)
        return _response(decoded.rejected_spans + admission.rejected_spans, message)

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> Any:
        self.metrics.request(TRANSPORT, code.name)
        status = status_pb2.Status(code=code.value[0], message=message)
        trailing: list[tuple[str, bytes]] = []
        if retry_after is not None:
            seconds = max(retry_after, 0.0)
            delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds - math.floor(seconds)) * 1e9))
            retry_info = error_details_pb2.RetryInfo(retry_delay=delay)
            detail = any_pb2.Any()
            detail.Pack(retry_info)
            status.details.append(detail)
            trailing.append(("google.rpc.retryinfo-bin", retry_info.SerializeToString()))
        trailing.append(("grpc-status-details-bin", status.SerializeToString()))
        context.abort_with_status(_Status(code, message, tuple(trailing)))  # raises


def _response(rejected: int, message: str) -> bytes:
    if not rejected and not message:
        return _EMPTY_RESPONSE
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = rejected
    response.partial_success.error_message = message
    return response.SerializeToString()


assert code_pb2.UNAVAILABLE == grpc.StatusCode.UNAVAILABLE.value[0]
