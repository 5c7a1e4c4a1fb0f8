"""OTLP/JSON trace requests into the neutral span model.

OTLP/JSON is protobuf's JSON mapping with the differences the OTLP specification makes:
trace and span ids are hex (any case), not base64 — so ``json_format`` alone would read
them wrong —, enums are integers (names are accepted too), 64-bit integers come as strings
or numbers, and unknown fields are ignored.  Keys are lowerCamelCase; the original proto
field names are accepted as well, as protobuf's own JSON parsers do.

The walk mirrors the protobuf one (same :class:`~.otlp_decode.Decoded` result, same
rules for what is refused or rejected, see ``otlp_decode``), over the dicts and lists
``orjson`` makes, and keeps track of where it is, so an error names the field:
``resourceSpans[0].scopeSpans[0].spans[3].traceId: traceId 'AAECAw==' is not 32 hex
characters (OTLP/JSON uses hex ids, not base64)``.  A body that is not valid UTF-8, or
holds lone UTF-16 surrogate escapes (which ``orjson`` refuses), is repaired to U+FFFD
with a warning rather than refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import orjson

from ..errors import OTLPDecodeError
from ..model import Event, Link, Span
from .otlp_decode import _KINDS, _STATUSES, HAS_IS_REMOTE, IS_REMOTE, Decoded, _Bad, _rejected_message, _where

__all__ = ["decode_json"]

_JSON_KINDS: dict[Any, str] = {
    **_KINDS,
    "SPAN_KIND_UNSPECIFIED": "internal",
    "SPAN_KIND_INTERNAL": "internal",
    "SPAN_KIND_SERVER": "server",
    "SPAN_KIND_CLIENT": "client",
    "SPAN_KIND_PRODUCER": "producer",
    "SPAN_KIND_CONSUMER": "consumer",
}
_JSON_STATUSES: dict[Any, str] = {**_STATUSES, "STATUS_CODE_UNSET": "unset", "STATUS_CODE_OK": "ok", "STATUS_CODE_ERROR": "error"}


def decode_json(body: bytes) -> Decoded:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest`` (hex ids, integer or named enums,
    64-bit integers as strings or numbers, lowerCamelCase or original field names)."""
    warning = ""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        document, warning = _load_json_repairing(body, exc)
    if not isinstance(document, dict):
        raise OTLPDecodeError(
            f"the request body must be a JSON object with 'resourceSpans' (got {_json_type(document)})"
        )
    decoded = _walk_json(document)
    if warning:
        decoded.message = f"{decoded.message}; {warning}" if decoded.message else warning
    return decoded


def _load_json_repairing(body: bytes, error: Exception) -> tuple[Any, str]:
    text = None
    warning = ""
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        text = bytes(body).decode("utf-8", "replace")
        warning = "the body was not valid UTF-8; invalid bytes were replaced with U+FFFD"
        try:
            return orjson.loads(text), warning
        except orjson.JSONDecodeError:
            pass
    try:
        document = json.loads(text)  # accepts lone surrogate escapes ("\ud800"), which orjson refuses
    except (ValueError, RecursionError):
        raise OTLPDecodeError(f"the request body is not valid JSON: {error}") from None
    repaired = [0]
    document = _strip_surrogates(document, repaired)
    if repaired[0]:
        note = f"{repaired[0]} string(s) held lone UTF-16 surrogates; they were replaced with U+FFFD"
        warning = f"{warning}; {note}" if warning else note
    return document, warning


def _strip_surrogates(value: Any, repaired: list[int]) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            repaired[0] += 1
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_strip_surrogates(v, repaired) for v in value]
    if isinstance(value, dict):
        return {_strip_surrogates(k, repaired): _strip_surrogates(v, repaired) for k, v in value.items()}
    return value


def _walk_json(document: dict) -> Decoded:
    spans: list[Span] = []
    append = spans.append
    rejected = 0
    reason = ""
    kinds, statuses = _JSON_KINDS, _JSON_STATUSES
    ri = si = pi = -1
    field = ""
    try:
        for ri, rs in enumerate(_list(document, "resourceSpans", "resource_spans")):
            si = pi = -1
            _object(rs, "a ResourceSpans")
            res = rs.get("resource")
            resource = _json_attrs(_object(res, "resource").get("attributes")) if res else {}
            for si, ss in enumerate(_list(rs, "scopeSpans", "scope_spans")):
                pi = -1
                _object(ss, "a ScopeSpans")
                scope_obj = ss.get("scope")
                scope = _text(_object(scope_obj, "scope").get("name"), "scope.name") if scope_obj else ""
                for pi, s in enumerate(_list(ss, "spans", "spans")):
                    if type(s) is not dict:
                        raise _Bad(f"must be a JSON object (got {_json_type(s)})")
                    get = s.get
                    field = "traceId"
                    trace_id = _hex_id(_pick(get, "traceId", "trace_id"), 32, "traceId")
                    field = "spanId"
                    span_id = _hex_id(_pick(get, "spanId", "span_id"), 16, "spanId")
                    if trace_id is None or span_id is None:
                        rejected += 1
                        which = "traceId" if trace_id is None else "spanId"
                        reason = reason or f"span {get('name')!r} has an empty or all-zero {which}"
                        continue
                    field = "parentSpanId"
                    parent_id = _hex_id(_pick(get, "parentSpanId", "parent_span_id"), 16, "parentSpanId")
                    field = "flags"
                    flags = _int(get("flags") or 0, "flags")
                    if flags & HAS_IS_REMOTE:
                        remote, known = bool(flags & IS_REMOTE) and parent_id is not None, True
                    else:
                        remote, known = False, parent_id is None
                    field = "startTimeUnixNano"
                    start = _int(_pick(get, "startTimeUnixNano", "start_time_unix_nano") or 0, "startTimeUnixNano")
                    field = "endTimeUnixNano"
                    end = _int(_pick(get, "endTimeUnixNano", "end_time_unix_nano") or 0, "endTimeUnixNano") or start
                    field = "kind"
                    kind = kinds.get(get("kind") or 0, "internal")
                    field = "status"
                    status = get("status")
                    if status:
                        _object(status, "status")
                        code = statuses.get(status.get("code") or 0, "unset")
                        status_message = _text(status.get("message") or "", "status.message")
                    else:
                        code, status_message = "unset", ""
                    field = "name"
                    name = _text(get("name") or "", "name")
                    field = "attributes"
                    attributes = _json_attrs(get("attributes"))
                    field = "events"
                    events = get("events")
                    events = _json_events(events) if events else ()
                    field = "links"
                    links = get("links")
                    links = _json_links(links) if links else ()
                    append(
                        Span(
                            trace_id,
                            span_id,
                            name,
                            start,
                            end,
                            parent_id,
                            remote,
                            kind,
                            code,
                            status_message,
                            attributes,
                            events,
                            links,
                            resource,
                            scope,
                            known,
                        )
                    )
    except _Bad as exc:
        raise OTLPDecodeError(f"{_where(ri, si, pi, field)}: {exc}") from None
    except (TypeError, AttributeError, ValueError) as exc:  # an unhashable enum, a number where a list belongs ...
        raise OTLPDecodeError(f"{_where(ri, si, pi, field)}: unexpected JSON ({exc})") from None
    except RecursionError:
        raise OTLPDecodeError(f"{_where(ri, si, pi, field)}: values are nested too deeply") from None
    return Decoded(spans, rejected, _rejected_message(rejected, reason))


def _pick(get: Any, camel: str, snake: str) -> Any:
    value = get(camel)
    return value if value is not None else get(snake)


def _list(obj: dict, camel: str, snake: str) -> list:
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake)
    if value is None:
        return []
    if type(value) is not list:
        raise _Bad(f"'{camel}' must be a JSON array (got {_json_type(value)})")
    return value


def _object(value: Any, what: str) -> dict:
    if type(value) is not dict:
        raise _Bad(f"{what} must be a JSON object (got {_json_type(value)})")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _hex_id(value: Any, width: int, name: str) -> str | None:
    """A hex id as lower-case hex; ``None`` for an empty or all-zero one."""
    if not value:
        return None
    if type(value) is not str:
        raise _Bad(f"{name} must be a string of {width} hex characters (got {_json_type(value)})")
    if len(value) == width:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) * 2 == width:
            return raw.hex() if any(raw) else None
    raise _Bad(f"{name} {value!r} is not {width} hex characters (OTLP/JSON uses hex ids, not base64)")


def _int(value: Any, name: str) -> int:
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        try:
            return int(value)
        except ValueError:
            pass
    elif kind is float and value.is_integer():
        return int(value)
    raise _Bad(f"{name} must be an integer (a number or a string of digits), got {value!r}")


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _Bad(f"{name} must be a string (got {_json_type(value)})")
    return value


def _json_attrs(kvs: Any) -> dict[str, Any]:
    if not kvs:
        return {}
    if type(kvs) is not list:
        raise _Bad(f"attributes must be a JSON array of {{key, value}} (got {_json_type(kvs)})")
    out = {}
    for kv in kvs:
        if type(kv) is not dict or type(kv.get("key")) is not str:
            raise _Bad(f"attributes must be {{\"key\": string, \"value\": AnyValue}} objects (got {kv!r:.80})")
        key = kv["key"]
        try:
            out[key] = _json_value(kv.get("value"))
        except _Bad as exc:
            raise _Bad(f"attribute {key!r}: {exc}") from None
    return out


def _json_value(value: Any) -> Any:
    if not value:
        return None
    if type(value) is not dict:
        raise _Bad(f"an AnyValue must be a JSON object such as {{\"stringValue\": \"x\"}} (got {_json_type(value)})")
    text = value.get("stringValue")
    if type(text) is str:
        return text
    for key, item in value.items():
        reader = _JSON_VALUES.get(key)
        if reader is not None:
            return reader(item)
    return None  # only unknown keys: ignored, as unknown fields are


def _json_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Bad(f"boolValue must be true or false (got {value!r:.40})")
    return value


def _json_double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
        if special is not None:
            return special
        try:
            return float(value)
        except ValueError:
            pass
    raise _Bad(f"doubleValue must be a number (got {value!r:.40})")


def _json_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _Bad(f"bytesValue must be a base64 string (got {_json_type(value)})")
    try:
        padded = value + "=" * (-len(value) % 4)
        if "-" in value or "_" in value:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"bytesValue {value!r:.40} is not base64") from None


def _json_array(value: Any) -> tuple:
    if not value:
        return ()
    values = _object(value, "arrayValue").get("values") or []
    if type(values) is not list:
        raise _Bad("arrayValue.values must be a JSON array")
    return tuple([_json_value(v) for v in values])


def _json_kvlist(value: Any) -> dict:
    if not value:
        return {}
    return _json_attrs(_object(value, "kvlistValue").get("values"))


_JSON_VALUES = {
    "stringValue": lambda v: _text(v, "stringValue"),
    "string_value": lambda v: _text(v, "stringValue"),
    "boolValue": _json_bool,
    "bool_value": _json_bool,
    "intValue": lambda v: _int(v, "intValue"),
    "int_value": lambda v: _int(v, "intValue"),
    "doubleValue": _json_double,
    "double_value": _json_double,
    "bytesValue": _json_bytes,
    "bytes_value": _json_bytes,
    "arrayValue": _json_array,
    "array_value": _json_array,
    "kvlistValue": _json_kvlist,
    "kvlist_value": _json_kvlist,
}


def _json_events(events: Any) -> tuple[Event, ...]:
    if type(events) is not list:
        raise _Bad(f"must be a JSON array (got {_json_type(events)})")
    out = []
    for event in events:
        _object(event, "an event")
        get = event.get
        name = _text(get("name") or "", "event name")
        time_ns = _int(_pick(get, "timeUnixNano", "time_unix_nano") or 0, "event timeUnixNano")
        out.append(Event(name, time_ns, _json_attrs(get("attributes"))))
    return tuple(out)


def _json_links(links: Any) -> tuple[Link, ...]:
    if type(links) is not list:
        raise _Bad(f"must be a JSON array (got {_json_type(links)})")
    out = []
    for link in links:
        _object(link, "a link")
        get = link.get
        trace_id = _hex_id(_pick(get, "traceId", "trace_id"), 32, "a link's traceId")
        span_id = _hex_id(_pick(get, "spanId", "span_id"), 16, "a link's spanId")
        if trace_id is None or span_id is None:
            continue  # nothing to follow
        out.append(Link(trace_id, span_id, _json_attrs(get("attributes"))))
    return tuple(out)
