"""A received request in the form a target takes: the same bytes whenever possible.

A request received as gzip protobuf goes to an HTTP target with gzip exactly as it came
(no decoding, no compression: the cheapest and the most faithful).  Only what the target
needs different is redone: compression added, changed or removed; a request received as
OTLP/JSON converted to protobuf (targets speak ``http/protobuf`` or gRPC); gRPC targets
get the plain protobuf message (gRPC compresses on its own).  That work runs on the
target's sender thread, never on a receiver's.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..errors import OTLPDecodeError
from ..ingest.otlp_decode import JSON, PROTOBUF, inflate
from ..ingest.otlp_intake import read_record

__all__ = ["WireRequest", "for_http", "for_grpc", "json_to_protobuf"]

NO_LIMIT = 1 << 62
GZIP_LEVEL = 6


class WireRequest:
    __slots__ = ("body", "content_encoding")

    def __init__(self, body: bytes, content_encoding: str) -> None:
        self.body = body
        self.content_encoding = content_encoding  # "gzip" or ""


def for_http(record: bytes, gzip: bool) -> WireRequest:
    """The body for ``POST /v1/traces`` with ``application/x-protobuf``."""
    content_type, encoding, body = read_record(record)
    if content_type == PROTOBUF and encoding == ("gzip" if gzip else ""):
        return WireRequest(body, encoding)  # as received
    message = _protobuf(content_type, encoding, body)
    return WireRequest(_gzip(message), "gzip") if gzip else WireRequest(message, "")


def for_grpc(record: bytes) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``TraceService/Export``."""
    content_type, encoding, body = read_record(record)
    return _protobuf(content_type, encoding, body)


def _protobuf(content_type: str, encoding: str, body: bytes) -> bytes:
    plain = inflate(body, encoding, NO_LIMIT)
    return json_to_protobuf(plain) if content_type == JSON else plain


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# -- OTLP/JSON → protobuf ---------------------------------------------------------------------

_ID_FIELDS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def json_to_protobuf(body: bytes) -> bytes:
    """An OTLP/JSON request as protobuf bytes.  OTLP/JSON writes ids in hex where
    protobuf's JSON mapping expects base64, so the ids are turned to base64 first; enums
    as numbers or names, 64-bit integers as strings or numbers and unknown fields are
    what ``json_format`` takes already."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        from ..ingest.otlp_json import _load_json_repairing

        document, _ = _load_json_repairing(body, OTLPDecodeError("invalid JSON"))
    if not isinstance(document, dict):
        raise OTLPDecodeError("the request body is not a JSON object")
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans", "spans"):
                _ids_to_base64(span)
                for link in _items(span, "links", "links"):
                    _ids_to_base64(link)
    message = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OTLPDecodeError(f"the OTLP/JSON request cannot be converted to protobuf: {exc}") from None
    return message.SerializeToString()


def _items(obj: Any, camel: str, snake: str) -> list:
    if not isinstance(obj, dict):
        return []
    value = obj.get(camel, obj.get(snake))
    return value if isinstance(value, list) else []


def _ids_to_base64(obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value:
            try:
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            except ValueError:
                raise OTLPDecodeError(f"{name} {value!r} is not hex") from None
