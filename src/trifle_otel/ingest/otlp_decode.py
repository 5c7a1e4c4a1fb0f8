"""OTLP trace requests into the neutral span model: the protobuf encoding, and what both
encodings share (the result, the rules, inflating bodies); OTLP/JSON is in ``otlp_json``.

Every span a sidecar receives passes through here, so the walk is written for speed: the
protobuf body is parsed by opentelemetry-proto's generated classes (the upb backend, in C)
and each span's fields are read once, straight into :class:`~trifle_otel.model.Span`
positional arguments; a resource's attributes become one dict shared by all spans of its
``ResourceSpans``.  The output matches ``ingest/sdk.py`` for SDK spans: lower-case hex ids,
integer nanoseconds, ``kind``/``status`` as the same strings, attribute values as plain
Python values (arrays as tuples, key-value lists as dicts, bytes as bytes, empty values as
``None``).

What is refused, and how:

- A body that is not a trace request at all (corrupt protobuf, invalid JSON, a wrong type
  where a list or an object belongs, an id of the wrong length or not hex — base64 ids in
  JSON are the usual mistake) raises :class:`~trifle_otel.errors.OTLPDecodeError` naming
  the field and where it is (``resourceSpans[0].scopeSpans[0].spans[3].traceId``): the
  receivers answer 400 / INVALID_ARGUMENT and the client does not retry it.
- A well-formed span that cannot be assembled (an empty or all-zero trace or span id) is
  left out and counted in :attr:`Decoded.rejected_spans` with the reason: the receivers
  report it as OTLP ``partial_success``, the other spans are kept.
- Strings that are not valid UTF-8 are *repaired*, not refused: protobuf's parser rejects
  the whole request for one bad byte in one attribute, which would drop every other span
  of the batch.  Such a request is parsed again with a copy of the OTLP schema in which
  string fields are bytes, invalid sequences become U+FFFD, and :attr:`Decoded.message`
  says so (an OTLP partial-success warning with ``rejected_spans`` 0).  JSON bodies with
  invalid UTF-8 or lone surrogate escapes are repaired the same way.  The fast path pays
  nothing for this: it runs only when the normal parse failed.

Remote parents: span ``flags`` bit 0x100 says whether bit 0x200 ("parent is remote") is
meaningful.  Without it the parent is recorded as local with ``parent_remote_known=False``,
for assembly to decide from what else it sees (resources, span kinds, a parent that never
arrives).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..errors import OTLPDecodeError, OTLPTooLarge
from ..model import Event, Link, Span

__all__ = ["Decoded", "decode_protobuf", "decode_request", "inflate", "PROTOBUF", "JSON", "ENCODINGS"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Content-Encoding header values accepted, and the name each is known by.
ENCODINGS = {"": "", "identity": "", "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}

# Span.SpanKind and Status.StatusCode numbers (and, for JSON, their names).
_KINDS = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}

HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_SCALARS = frozenset(("string_value", "bool_value", "int_value", "double_value", "bytes_value"))


@dataclass(slots=True)
class Decoded:
    """The spans of one request, how many were left out, and why (or a warning)."""

    spans: list[Span]
    rejected_spans: int = 0
    message: str = ""


class _Bad(Exception):
    """A malformed field; the walk adds where it is and raises OTLPDecodeError."""


def decode_request(body: bytes, content_type: str) -> Decoded:
    """Decode an uncompressed request body of ``PROTOBUF`` or ``JSON`` content type."""
    if content_type == JSON:
        from .otlp_json import decode_json

        return decode_json(body)
    return decode_protobuf(body)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The body decompressed (``encoding`` as in ``ENCODINGS``), refused with OTLPTooLarge
    as soon as the output passes ``limit`` bytes: a gzip bomb costs at most ``limit`` bytes
    of memory and the time to inflate them.  Concatenated gzip members are read in turn."""
    if len(body) > limit:
        raise OTLPTooLarge(f"the request body is {len(body):,} bytes, over the limit of {limit:,} bytes")
    if not encoding:
        return body
    name = "gzip" if encoding == "gzip" else "deflate"
    out = bytearray()
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib, told by the header
    data = body
    try:
        while True:
            chunk = inflater.decompress(data, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise OTLPTooLarge(
                    f"the request body inflates to more than the limit of {limit:,} bytes "
                    f"({len(body):,} bytes of {name} as received)"
                )
            if inflater.eof:
                if not inflater.unused_data:
                    return bytes(out)
                data = inflater.unused_data  # another gzip member follows
                inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
                continue
            data = inflater.unconsumed_tail
            if not data and not chunk:
                raise OTLPDecodeError(f"the {name} request body is truncated")
    except zlib.error as exc:
        raise OTLPDecodeError(f"the request body is not valid {name} (Content-Encoding: {encoding}): {exc}") from None


# -- protobuf -----------------------------------------------------------------------------


def decode_protobuf(body: bytes) -> Decoded:
    """Decode a binary ``ExportTraceServiceRequest``."""
    warning = ""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        request, repaired = _parse_repairing_utf8(body, exc)
        warning = f"{repaired} string value(s) were not valid UTF-8; invalid bytes were replaced with U+FFFD"
    decoded = _walk_protobuf(request)
    if warning:
        decoded.message = f"{decoded.message}; {warning}" if decoded.message else warning
    return decoded


def _walk_protobuf(request: ExportTraceServiceRequest) -> Decoded:
    spans: list[Span] = []
    append = spans.append
    rejected = 0
    reason = ""
    kinds, statuses = _KINDS, _STATUSES
    ri = si = pi = -1
    try:
        for ri, rs in enumerate(request.resource_spans):
            si = pi = -1
            resource = _attrs(rs.resource.attributes)
            for si, ss in enumerate(rs.scope_spans):
                pi = -1
                scope = ss.scope.name
                for pi, s in enumerate(ss.spans):
                    trace_id = s.trace_id
                    span_id = s.span_id
                    if len(trace_id) != 16 or len(span_id) != 8 or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
                        why = _bad_ids(trace_id, span_id, 16, 8)
                        rejected += 1
                        reason = reason or f"span {s.name!r} {why}"
                        continue
                    parent = s.parent_span_id
                    if parent:
                        if len(parent) != 8:
                            raise _Bad(f"parentSpanId is {len(parent)} bytes, expected 8")
                        parent_id = None if parent == _ZERO_SPAN else parent.hex()
                    else:
                        parent_id = None
                    flags = s.flags
                    if flags & HAS_IS_REMOTE:
                        remote, known = bool(flags & IS_REMOTE) and parent_id is not None, True
                    else:
                        remote, known = False, parent_id is None
                    start = s.start_time_unix_nano
                    status = s.status
                    events = s.events
                    links = s.links
                    append(
                        Span(
                            trace_id.hex(),
                            span_id.hex(),
                            s.name,
                            start,
                            s.end_time_unix_nano or start,
                            parent_id,
                            remote,
                            kinds.get(s.kind, "internal"),
                            statuses.get(status.code, "unset"),
                            status.message,
                            _attrs(s.attributes),
                            tuple([Event(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in events]) if events else (),
                            _links(links) if links else (),
                            resource,
                            scope,
                            known,
                        )
                    )
    except _Bad as exc:
        raise OTLPDecodeError(f"{_where(ri, si, pi)}: {exc}") from None
    return Decoded(spans, rejected, _rejected_message(rejected, reason))


def _attrs(kvs: Any) -> dict[str, Any]:
    if not kvs:
        return {}
    out = {}
    for kv in kvs:
        value = kv.value
        which = value.WhichOneof("value")
        out[kv.key] = getattr(value, which) if which in _SCALARS else _complex(value, which)
    return out


def _complex(value: Any, which: str | None) -> Any:
    if which == "array_value":
        return tuple([_value(v) for v in value.array_value.values])
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return None  # an empty AnyValue: OTLP's null


def _value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which in _SCALARS else _complex(value, which)


def _links(links: Any) -> tuple[Link, ...]:
    out = []
    for link in links:
        trace_id, span_id = link.trace_id, link.span_id
        if len(trace_id) != 16 or len(span_id) != 8:
            if not trace_id and not span_id:
                continue  # an empty link carries nothing to follow
            raise _Bad(f"a link's {_bad_ids(trace_id, span_id, 16, 8)}")
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            continue
        out.append(Link(trace_id.hex(), span_id.hex(), _attrs(link.attributes)))
    return tuple(out)


def _bad_ids(trace_id: Any, span_id: Any, trace_len: int, span_len: int) -> str:
    if len(trace_id) not in (0, trace_len):
        raise _Bad(f"traceId is {len(trace_id)} bytes, expected {trace_len}")
    if len(span_id) not in (0, span_len):
        raise _Bad(f"spanId is {len(span_id)} bytes, expected {span_len}")
    if not trace_id or trace_id == _ZERO_TRACE:
        return "has an empty or all-zero traceId"
    return "has an empty or all-zero spanId"


def _where(ri: int, si: int, pi: int, field: str = "") -> str:
    where = "resourceSpans"
    if ri >= 0:
        where += f"[{ri}]"
    if si >= 0:
        where += f".scopeSpans[{si}]"
    if pi >= 0:
        where += f".spans[{pi}]"
        if field:
            where += f".{field}"
    return where


def _rejected_message(rejected: int, reason: str) -> str:
    if not rejected:
        return ""
    return f"{rejected} span(s) rejected; the first: {reason}"


def _parse_repairing_utf8(body: bytes, error: DecodeError) -> tuple[ExportTraceServiceRequest, int]:
    """Parse with string fields read as bytes, repair invalid UTF-8, parse the result again.

    Raises OTLPDecodeError when the body is not a valid request even so (truncated, not
    protobuf)."""
    lenient_class, string_fields = _lenient_schema()
    try:
        lenient = lenient_class.FromString(body)
    except DecodeError:
        detail = str(error)
        if detail.startswith("Error parsing message"):
            detail = detail.rsplit(": ", 1)[-1]
        hint = "it is truncated, or not protobuf"
        if bytes(body[:64]).lstrip()[:1] in (b"{", b"["):
            hint = "it looks like JSON: send OTLP/JSON as application/json"
        raise OTLPDecodeError(f"the request body is not a protobuf ExportTraceServiceRequest ({detail}): {hint}") from None
    repaired = _repair(lenient, string_fields)
    return ExportTraceServiceRequest.FromString(lenient.SerializeToString()), repaired


@lru_cache(maxsize=1)
def _lenient_schema() -> tuple[Any, frozenset[str]]:
    """The OTLP trace request schema with every string field turned into bytes (same wire
    format, no UTF-8 check), in a descriptor pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    pool = descriptor_pool.DescriptorPool()
    string_fields: set[str] = set()

    def to_bytes(message: Any, prefix: str) -> None:
        name = f"{prefix}.{message.name}"
        for field in message.field:
            if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                string_fields.add(f"{name}.{field.name}")
        for nested in message.nested_type:
            to_bytes(nested, name)

    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            to_bytes(message, proto.package)
        pool.Add(proto)
    request = pool.FindMessageTypeByName("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest")
    return message_factory.GetMessageClass(request), frozenset(string_fields)


def _repair(message: Any, string_fields: frozenset[str]) -> int:
    repaired = 0
    for field, value in message.ListFields():
        if field.message_type is not None:
            for item in value if _repeated(field) else (value,):
                repaired += _repair(item, string_fields)
        elif field.full_name in string_fields and not _repeated(field):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                setattr(message, field.name, value.decode("utf-8", "replace").encode("utf-8"))
                repaired += 1
    return repaired


def _repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == field.LABEL_REPEATED
