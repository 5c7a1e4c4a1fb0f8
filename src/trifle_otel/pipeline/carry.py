"""Spans as bytes and back, without loss: what a checkpoint carries forward in the
write-ahead log (the spans of executions still open) and what replay reads again.

The encoding is orjson over plain lists, one list per span, with each resource written once
per record (the spans of one OTLP ``ResourceSpans`` share a single dict, and get it back
shared).  Attribute values keep their Python types: OTLP arrays are tuples (JSON lists,
turned back into tuples), bytes are ``{"\\u0000b": base64}``, key-value lists stay dicts.
"""

from __future__ import annotations

import base64
from typing import Any, Iterable

import orjson

from ..model import Event, Link, Span

__all__ = ["encode_spans", "decode_spans"]

_BYTES = "\u0000b"


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot carry a value of type {type(value).__name__}")


def _restore(value: Any) -> Any:
    """JSON lists back to tuples, the bytes wrapper back to bytes (scalars pass as they are)."""
    if type(value) is list:
        return tuple([_restore(v) for v in value])
    if type(value) is dict:
        if len(value) == 1 and _BYTES in value:
            return base64.b64decode(value[_BYTES])
        return {k: _restore(v) for k, v in value.items()}
    return value


def _attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    for value in attrs.values():
        if type(value) is list or type(value) is dict:
            return {k: _restore(v) for k, v in attrs.items()}
    return attrs  # scalars only: the common case costs nothing


def encode_spans(spans: Iterable[Span], header: dict[str, Any] | None = None) -> bytes:
    """``{"h": header, "r": [resources], "s": [[span fields]]}`` as JSON bytes."""
    resources: list[Any] = []
    index: dict[int, int] = {}
    rows = []
    for s in spans:
        resource = s.resource
        number = index.get(id(resource))
        if number is None:
            number = index[id(resource)] = len(resources)
            resources.append(resource)
        rows.append((
            s.trace_id, s.span_id, s.name, s.start_ns, s.end_ns, s.parent_span_id, s.parent_remote, s.kind, s.status,
            s.status_message, s.attributes,
            [(e.name, e.time_ns, e.attributes) for e in s.events] if s.events else 0,
            [(k.trace_id, k.span_id, k.attributes) for k in s.links] if s.links else 0,
            number, s.scope, s.parent_remote_known,
        ))
    return orjson.dumps({"h": header or {}, "r": resources, "s": rows}, default=_default)


def decode_spans(body: bytes) -> tuple[dict[str, Any], list[Span]]:
    """The header and the spans of a body written by :func:`encode_spans`."""
    document = orjson.loads(body)
    resources = [_attributes(r) for r in document["r"]]
    spans = []
    for (trace_id, span_id, name, start, end, parent, remote, kind, status, message, attrs, events, links, resource,
         scope, known) in document["s"]:
        spans.append(Span(
            trace_id, span_id, name, start, end, parent, remote, kind, status, message, _attributes(attrs),
            tuple([Event(n, t, _attributes(a)) for n, t, a in events]) if events else (),
            tuple([Link(t, i, _attributes(a)) for t, i, a in links]) if links else (),
            resources[resource], scope, known,
        ))
    return document["h"], spans
