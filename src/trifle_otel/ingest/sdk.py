"""Conversion of OTel SDK ``ReadableSpan`` objects into the neutral span model."""

from __future__ import annotations

from typing import Any, Mapping

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from ..model import Event, Link, Span

# Keyed by the enums' values: an enum member hashes in Python code, its value in C.
_KIND = {
    SpanKind.INTERNAL.value: "internal",
    SpanKind.SERVER.value: "server",
    SpanKind.CLIENT.value: "client",
    SpanKind.PRODUCER.value: "producer",
    SpanKind.CONSUMER.value: "consumer",
}
_STATUS = {StatusCode.UNSET.value: "unset", StatusCode.OK.value: "ok", StatusCode.ERROR.value: "error"}

# Resources are shared by every span of a provider: convert each one once.
_resource_cache: dict[int, tuple[Any, Mapping[str, Any]]] = {}


def _resource(span: ReadableSpan) -> Mapping[str, Any]:
    resource = span.resource
    if resource is None:
        return {}
    cached = _resource_cache.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    attrs = dict(resource.attributes)
    if len(_resource_cache) > 64:
        _resource_cache.clear()
    _resource_cache[id(resource)] = (resource, attrs)
    return attrs


def _attrs(mapping: Any, frozen: bool = True) -> Mapping[str, Any]:
    """A read-only view of span attributes.

    An ended span's ``BoundedAttributes`` is immutable, so its inner dict is shared as it is
    (no copy on the hot path); a started span may still change, so it is copied.
    """
    if not mapping:
        return {}
    inner = getattr(mapping, "_dict", None)
    if inner is not None and frozen:
        return inner
    source = inner if inner is not None else mapping
    for _ in range(3):
        try:
            return dict(source)
        except RuntimeError:  # changed size during iteration (span still being written)
            continue
    return {}


def _remembering_hex(spec: str) -> Any:
    """An id formatter that remembers the last id: the spans of one execution arrive
    together and share their trace id, and siblings share their parent's id.  (It keeps one
    ``(id, text)`` pair, replaced whole: safe when several threads convert.)"""
    last: list[tuple[Any, str]] = [(None, "")]

    def to_hex(value: int) -> str:
        known = last[0]
        if known[0] == value:
            return known[1]
        text = format(value, spec)
        last[0] = (value, text)
        return text

    return to_hex


_trace_hex = _remembering_hex("032x")
_parent_hex = _remembering_hex("016x")


def _items(sequence: Any) -> Any:
    """An ended SDK span's ``BoundedList`` items without its Python-level ``__len__`` (truth
    tests on it run for every span); nothing is added to them once the span has ended."""
    return getattr(sequence, "_dq", sequence)


def from_readable_span(span: ReadableSpan) -> Span:
    """Convert one SDK span.  Reads the SDK's fields directly when it can (this runs for
    every span on the worker), and through the public properties otherwise."""
    try:
        ctx = span._context
        parent = span._parent
        status = span._status
        end = span._end_time
        attributes = span._attributes
        events = span._events
        links = span._links
        kind = span._kind
        scope = span._instrumentation_scope
        start = span._start_time
    except AttributeError:
        ctx, parent, status, end = span.context, span.parent, span.status, span.end_time
        attributes, events, links = span.attributes, span.events, span.links
        kind, scope, start = span.kind, span.instrumentation_scope, span.start_time
    frozen = end is not None
    if frozen:  # (a started span may still get links: its BoundedList iterates a locked copy)
        events = _items(events)
        links = _items(links)
    return Span(
        _trace_hex(ctx.trace_id),
        format(ctx.span_id, "016x"),
        span.name,
        start or 0,
        end,
        _parent_hex(parent.span_id) if parent is not None else None,
        parent is not None and parent.is_remote,
        _KIND.get(getattr(kind, "_value_", kind), "internal"),
        _STATUS.get(getattr(status.status_code, "_value_", None), "unset") if status is not None else "unset",
        (status.description or "") if status is not None else "",
        _attrs(attributes, frozen),
        tuple([Event(e.name, e.timestamp, _attrs(e.attributes)) for e in events]) if frozen and events else (),
        tuple(
            [Link(format(l.context.trace_id, "032x"), format(l.context.span_id, "016x"), _attrs(l.attributes)) for l in links]
        )
        if links
        else (),
        _resource(span),
        scope.name if scope is not None else "",
    )


ROOT = "root"
STEP = "step"


class SDKStarts:
    """What the worker needs of SDK spans the processor saw start (live mode): whether one
    is a local root (a job run starting) or a step inside one, and a key that its end
    carries too (the SDK hands the end a new object with the same ``SpanContext``)."""

    def __init__(self, skip_bare_producers: bool = True) -> None:
        self.skip_producers = skip_bare_producers

    def kind(self, span: Any) -> str | None:
        """``root``, ``step``, or None for nothing to do: an enqueue, or a span that has
        ended already (its end is in the batch the worker takes with it, or the next one,
        and says everything its start would: most steps are over before the worker looks)."""
        if getattr(span, "_end_time", None) is not None:
            return None
        parent = span.parent
        if parent is not None and not parent.is_remote:
            return STEP
        if self.skip_producers and span.kind is SpanKind.PRODUCER:
            return None  # an enqueue: not a job run of its own
        return ROOT

    @staticmethod
    def key(span: Any) -> int:
        # The context object is shared by the started span and its ended snapshot, and kept
        # alive by the entry that holds the started span: its id is unique while it matters.
        try:
            return id(span._context)
        except AttributeError:
            return id(span.context)
