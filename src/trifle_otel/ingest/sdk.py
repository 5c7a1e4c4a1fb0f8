"""Conversion of OTel SDK ``ReadableSpan`` objects into the neutral span model."""

from __future__ import annotations

from typing import Any, Mapping

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

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
# The last resource converted, ``(resource, attributes)`` replaced whole (threads may share it):
# consecutive spans nearly always come from one provider.
_last_resource: list[tuple[Any, Mapping[str, Any]]] = [(None, {})]


def _resource(resource: Any) -> Mapping[str, Any]:
    if resource is None:
        return {}
    cached = _resource_cache.get(id(resource))
    if cached is not None and cached[0] is resource:
        _last_resource[0] = cached
        return cached[1]
    attrs = dict(resource.attributes)
    if len(_resource_cache) > 64:
        _resource_cache.clear()
    _resource_cache[id(resource)] = _last_resource[0] = (resource, attrs)
    return attrs


def _attrs(mapping: Any, frozen: bool = True) -> Mapping[str, Any]:
    """A read-only view of span attributes.

    An ended span's ``BoundedAttributes`` is immutable, so its inner dict is shared as it is
    (no copy on the hot path); a started span may still change, so it is copied.  (The inner
    dict is looked for before any truth test: ``BoundedAttributes.__len__`` is Python code.)
    """
    inner = getattr(mapping, "_dict", None)
    if inner is not None:
        if frozen:
            return inner
        source = inner
    elif not mapping:
        return {}
    else:
        source = mapping
    for _ in range(3):
        try:
            return dict(source)
        except RuntimeError:  # changed size during iteration (span still being written)
            continue
    return {}


# The last trace id and parent id formatted, each an ``(id, text)`` pair replaced whole (safe
# when several threads convert): the spans of one execution arrive together and share their
# trace id, and siblings share their parent's id.
_last_trace: list[tuple[Any, str]] = [(None, "")]
_last_parent: list[tuple[Any, str]] = [(None, "")]
# ``SpanContext`` is a tuple (trace id, span id, is_remote, ...) whose fields are properties
# over its items: the items are read directly while that holds.
_CONTEXT_IS_TUPLE = tuple(SpanContext(1, 2, True))[:3] == (1, 2, True)


def from_readable_span(span: ReadableSpan) -> Span:
    """Convert one SDK span.  Reads the SDK's fields directly when it can (this runs for
    every span on the worker, so each property call and helper call saved counts), and
    through the public properties otherwise."""
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
        name = span._name
        resource = span._resource
    except AttributeError:
        ctx, parent, status, end = span.context, span.parent, span.status, span.end_time
        attributes, events, links = span.attributes, span.events, span.links
        kind, scope, start = span.kind, span.instrumentation_scope, span.start_time
        name, resource = span.name, span.resource
    if end is not None:
        # An ended span's BoundedLists get nothing more: their items, without the Python-level
        # ``__len__`` that truth tests would call.  (A started span may still get links: its
        # BoundedList iterates a locked copy.)
        events = getattr(events, "_dq", events)
        links = getattr(links, "_dq", links)
        attrs = getattr(attributes, "_dict", None)
        if attrs is None:
            attrs = _attrs(attributes)
        event_list = tuple([Event(e.name, e.timestamp, _attrs(e.attributes)) for e in events]) if events else ()
    else:
        attrs = _attrs(attributes, False)
        event_list = ()
    if _CONTEXT_IS_TUPLE:
        trace_id, span_id = ctx[0], ctx[1]
    else:
        trace_id, span_id = ctx.trace_id, ctx.span_id
    known = _last_trace[0]
    if known[0] == trace_id:
        trace_hex = known[1]
    else:
        trace_hex = format(trace_id, "032x")
        _last_trace[0] = (trace_id, trace_hex)
    if parent is not None:
        parent_id = parent.span_id
        known = _last_parent[0]
        if known[0] == parent_id:
            parent_hex: str | None = known[1]
        else:
            parent_hex = format(parent_id, "016x")
            _last_parent[0] = (parent_id, parent_hex)
        parent_remote = parent.is_remote
    else:
        parent_hex = None
        parent_remote = False
    if status is None:
        status_code, status_message = "unset", ""
    else:
        try:
            code, description = status._status_code, status._description
        except AttributeError:
            code, description = status.status_code, status.description
        status_code, status_message = _STATUS.get(getattr(code, "_value_", None), "unset"), description or ""
    known = _last_resource[0]
    resource_attrs = known[1] if known[0] is resource and resource is not None else _resource(resource)
    return Span(
        trace_hex,
        format(span_id, "016x"),
        name,
        start or 0,
        end,
        parent_hex,
        parent_remote,
        _KIND.get(getattr(kind, "_value_", kind), "internal"),
        status_code,
        status_message,
        attrs,
        event_list,
        tuple(
            [Link(format(l.context.trace_id, "032x"), format(l.context.span_id, "016x"), _attrs(l.attributes)) for l in links]
        )
        if links
        else (),
        resource_attrs,
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
