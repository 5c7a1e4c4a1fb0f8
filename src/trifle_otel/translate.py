"""Translation of one execution into a Trifle::Traces 2.x document: index record + lines.

Pure functions over the neutral model: no I/O, no clocks (``now_ns`` is passed in).

Reading of OTel (PRODUCT §3): a child span is a begin line ``"<name> ↴"`` at level L, its
content (events and child spans, in time order) at L+1, an end line ``"<name> ↵"`` (state
``error`` when the span failed) and, when the span carries a result, a raw line
``"↳ <result>"``.  The local root's content is at level 0.  Values over the payload limit
become artifacts referenced by a ``media`` line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Any, Iterable

from . import conventions as cv
from .config import Config
from .model import Event, Execution, Span
from .jsonutil import storable
from .paths import compile_template

BEGIN = " \u21b4"  # ↴
END = " \u21b5"  # ↵
RESULT = "\u21b3 "  # ↳

MAX_META_KEYS = 200
MAX_META_VALUE = 4096  # bytes; longer meta values go to an artifact (the record stays small)
MAX_KEY_LENGTH = 256
MAX_TAGS = 100
MAX_TAG_LENGTH = 256

_CONTEXT_PREFIXES = ("service.", "deployment.", "host.", "k8s.", "container.", "cloud.", "process.pid")


@dataclass(slots=True)
class Document:
    record: dict[str, Any]
    lines: list[dict[str, Any]]
    parts: list[list[dict[str, Any]]]
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)
    ignored: bool = False
    bodies: list[bytes] | None = None  # the parts encoded for the data store (see sinks.encode_parts)

    @property
    def reference(self) -> str:
        return self.record["reference"]


def segments_of(key: str) -> list[str]:
    """``a/b/c`` → ``[a, a/b, a/b/c]``: every prefix, so a key prefix search is an index lookup."""
    pieces = key.split("/")
    return ["/".join(pieces[: i + 1]) for i in range(len(pieces))]


_SLASHES = re.compile(r"/+")


@lru_cache(maxsize=10_000)  # a fleet's executions use a handful of keys; keys come from data: bounded
def clean_key(key: str) -> str:
    """A key as stored: no empty segments, no lone surrogates, at most 256 characters."""
    return _SLASHES.sub("/", storable(key).strip()).strip("/")[:MAX_KEY_LENGTH] or "unnamed"


@lru_cache(maxsize=10_000)
def _segments_of(key: str) -> tuple[str, ...]:
    """``segments_of`` as a tuple, remembered per key (the record keeps it as it is)."""
    return tuple(segments_of(key))


_UTC = timezone.utc
_FLOAT_EXACT_NS = 4 * 10**18  # below (the year 2096), milliseconds / 1000 as a float lands on the exact microsecond


def to_datetime(ns: int) -> datetime:
    """Millisecond precision: what every store (BSON dates included) keeps exactly."""
    if 0 <= ns < _FLOAT_EXACT_NS:
        return datetime.fromtimestamp(ns // 1_000_000 / 1000, _UTC)  # (a fifth of the time of the exact form)
    return datetime.fromtimestamp(ns // 1_000_000_000, _UTC).replace(microsecond=(ns // 1_000_000) % 1000 * 1000)


def _text(value: Any) -> str:
    """A readable one-line form (``{"rows": 3}``) of a non-string value, for raw lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    try:
        return _READABLE_JSON.encode(value)
    except (TypeError, ValueError):
        return repr(value)


# One encoder for every raw line (``json.dumps`` with options builds a new one per call).
_READABLE_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _json_attrs(attrs: dict[str, Any]) -> str:
    return _text({k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()})


class Translator:
    """Compiled once from the configuration; ``translate`` is called per execution."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._key_template = compile_template(config.key_template) if config.key_template else None
        self._tag_attributes = tuple(config.tag_attributes)
        self._mark_attributes = frozenset((cv.IGNORE, cv.STATE, cv.TAGS, *self._tag_attributes))
        self._key_attributes = (cv.KEY, *config.key_attributes)
        self._context_of: tuple[Any, dict[str, Any]] = (None, {})  # (resource, its context): the last one
        self._meta_filter = set(config.meta_attributes) if config.meta_attributes is not None else None
        self._limit = config.payload_size_limit
        self._meta_limit = min(MAX_META_VALUE, config.payload_size_limit)

    # -- public ------------------------------------------------------------------------

    def key_of(self, root: Span) -> str:
        if self._key_template is not None:
            key = self._key_template(root)
            if key:
                return clean_key(key)
        # A producer root names the job it enqueues, not itself: keep the job's key for runs.
        attrs = (cv.KEY,) if root.kind == "producer" else self._key_attributes
        for attr in attrs:
            value = root.attributes.get(attr)
            if value:
                return clean_key(str(value))
        return clean_key(root.name)

    def translate(self, execution: Execution, now_ns: int) -> Document:
        root = execution.root
        spans = execution.spans
        marked_ignored, marked_state, tag_set = _marks(root, spans, self._tag_attributes, self._mark_attributes)
        ignored = marked_ignored or (
            # An enqueue with nothing around it (a script or a scheduler sending a job) is not a
            # job run: the run is the consumer's execution, which links back to it.
            self.config.skip_bare_producers and root.kind == "producer" and not spans
        )
        reference = execution.reference
        lines: list[dict[str, Any]] = []
        builder = _LineBuilder(lines)
        builder.content(root, _children_by_parent(root, spans), level=0)
        builder.outcome(root, level=0)
        artifacts, counters = offload_and_count(lines, self._limit)

        # Trifle semantics: the last explicit fail/warn/success wins; a failed root is an
        # error.  A failed child span marks its own lines, not the execution (the job may
        # have handled it).
        state = "running" if execution.running else "error" if root.status == "error" else marked_state or "success"
        end_ns = root.end_ns if root.end_ns is not None else max(now_ns, root.start_ns)
        first_at = to_datetime(root.start_ns)
        key = self.key_of(root)
        meta, meta_artifacts = self._meta(root)
        artifacts.extend(meta_artifacts)
        part_size = self.config.part_size
        parts = [lines[i : i + part_size] for i in range(0, len(lines), part_size)]
        record = {
            "reference": reference,
            "key": key,
            "segments": _segments_of(key),
            "tags": sorted(storable(t[:MAX_TAG_LENGTH]) for t in tag_set if t)[:MAX_TAGS],
            "state": state,
            "meta": meta,
            "context": self._context(root),
            "duration": round((end_ns - root.start_ns) / 1e6),
            "counters": counters,
            "length": len(lines),
            "parts": len(parts),
            "first_at": first_at,
            "last_at": to_datetime(end_ns),
            "retention": self.config.retention_days,
            "expires_at": first_at + timedelta(days=self.config.retention_days),
            "bucket_name": "",  # set by the sink: the data store picks the bucket
            "trace_id": root.trace_id,
            "span_id": root.span_id,
            "name": root.name,
            "service": str(root.resource.get("service.name", "")),
            "links": _links(root),
            "start_ns": root.start_ns,  # first_at keeps milliseconds: offsets of steps need the start
        }
        if execution.running:
            record["open_steps"] = builder.open_steps
        return Document(record, lines, parts, artifacts, ignored)

    # -- internals ---------------------------------------------------------------------

    def _context(self, root: Span) -> dict[str, Any]:
        """The record's context: the resource's attributes that say where the job ran.  The
        spans of a provider share one resource: it is read once, and each record gets a copy."""
        resource = root.resource
        last = self._context_of
        if last[0] is not resource:
            last = self._context_of = (resource, _context(root))
        return dict(last[1])

    def _meta(self, root: Span) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        meta: dict[str, Any] = {}
        artifacts: list[tuple[str, bytes]] = []
        dropped = 0
        for key, value in root.attributes.items():
            if key.startswith(cv.PREFIX) or (self._meta_filter is not None and key not in self._meta_filter):
                continue
            if len(meta) >= MAX_META_KEYS:
                dropped += 1
                continue
            kind = type(value)
            if (kind is str and len(value) * 4 <= self._meta_limit) or kind is int or kind is float or kind is bool:
                meta[key] = value  # the usual attribute: kept as it is
                continue
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, (bool, int, float)) or value is None:
                meta[key] = value
                continue
            text = value if isinstance(value, str) else None
            if text is not None and len(text) * 4 <= self._meta_limit:  # cannot be over, even at 4 bytes a char
                meta[key] = value
                continue
            size = len(text.encode("utf-8", "replace")) if text is not None else len(_text(value).encode())
            if size > self._meta_limit:
                name = f"meta_{len(artifacts) + 1}.txt"
                artifacts.append((name, (text if text is not None else _text(value)).encode("utf-8", "replace")))
                value = {"artifact": name, "size": size}
            meta[key] = value
        if dropped:
            meta["trifle.dropped_meta"] = dropped
        return meta, artifacts


def _strings(value: Any) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return (str(v) for v in value)


def _marks(
    root: Span, spans: list[Span], tag_attributes: tuple[str, ...], mark_attributes: frozenset[str]
) -> tuple[bool, str | None, set[str]]:
    """What the spans' attributes and events say of their execution, in one pass: whether it
    is ignored, the latest explicit state (``success``/``warning``/``error``), its tags.
    (``mark_attributes``: every attribute read here; most spans have none of them, which one
    test in C tells.)"""
    ignored = False
    latest: str | None = None
    latest_at = -1
    tags: set[str] = set()
    for span in (root, *spans):
        attrs = span.attributes
        if attrs and not mark_attributes.isdisjoint(attrs):
            if attrs.get(cv.IGNORE):
                ignored = True
            state = attrs.get(cv.STATE)
            if state in _EXPLICIT_STATES:
                at = span.end_ns or span.start_ns
                if at >= latest_at:
                    latest, latest_at = state, at
            for attr in tag_attributes:
                value = attrs.get(attr)
                if value is not None and value != "":
                    tags.add(f"{attr}:{value}")
            explicit = attrs.get(cv.TAGS)
            if explicit:
                tags.update(_strings(explicit))
        for event in span.events:
            name = event.name
            if name == cv.EVENT_IGNORE:
                ignored = True
            elif name == cv.EVENT_TAG:
                tags.update(_strings(event.attributes.get("tags")))
            else:
                state = cv.STATE_EVENTS.get(name)
                if state is not None and event.time_ns >= latest_at:
                    latest, latest_at = state, event.time_ns
    return ignored, latest, tags


_EXPLICIT_STATES = frozenset(("success", "warning", "error"))


def _context(root: Span) -> dict[str, Any]:
    return {k: v for k, v in root.resource.items() if k.startswith(_CONTEXT_PREFIXES)}


def _links(root: Span) -> list[dict[str, str]]:
    links = []
    if root.parent_span_id is not None:
        links.append({"type": "parent", "trace_id": root.trace_id, "span_id": root.parent_span_id})
    for link in root.links:
        links.append({"type": "link", "trace_id": link.trace_id, "span_id": link.span_id})
    return links


def offload_and_count(lines: list[dict[str, Any]], limit: int | None) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """One pass over the lines: messages over ``limit`` bytes become artifacts (their line a
    media line; no limit: none do), and the record's counters of what is left."""
    artifacts = []
    states = {"success": 0, "warning": 0, "error": 0, "debug": 0}
    types = {"text": 0, "head": 0, "raw": 0, "media": 0}
    max_level = 0
    index = 0
    for line in lines:
        index += 1
        # (a message of at most limit / 4 characters cannot exceed it, even at 4 bytes a character)
        if limit is not None and len(message := line["message"]) * 4 > limit:
            data = message.encode("utf-8", "replace")
            if len(data) > limit:
                name = f"part_row_{index}.txt"
                artifacts.append((name, data))
                line["message"] = name
                line["type"] = "media"
                line["size"] = len(data)
        state = line["state"]
        if state in states:
            states[state] += 1
        kind = line["type"]
        if kind in types:
            types[kind] += 1
        if line["level"] > max_level:
            max_level = line["level"]
    return artifacts, {"states": states, "types": types, "max_level": max_level}


def counters_of(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A record's ``counters``: lines by state and by type, and the deepest level."""
    return offload_and_count(lines, None)[1]


_start = attrgetter("start_ns")  # (a sort key in C: called for every child span)


def _children_by_parent(root: Span, spans: list[Span]) -> dict[str, list[Span]]:
    known = {root.span_id}
    known.update(s.span_id for s in spans)
    children: dict[str, list[Span]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in known else root.span_id
        children.setdefault(parent, []).append(span)
    return children


# Frames of OpenTelemetry's own code (the context manager that records the exception): noise
# in a job's stack trace.
_OTEL_FRAME = re.compile(r"[\\/]opentelemetry[\\/](?:sdk|trace|context)[\\/]|[\\/]opentelemetry[\\/]util[\\/]_decorator\.py$")
_FRAME = re.compile(r'^  File "([^"]*)"')
_TRACEBACK = "Traceback (most recent call last):"


def clean_stack(stack: str) -> str:
    """A Python stack trace without the frames inside OpenTelemetry (each with its source lines)."""
    out: list[str] = []
    skipping = False
    for line in stack.rstrip().split("\n"):
        frame = _FRAME.match(line)
        if frame:
            skipping = bool(_OTEL_FRAME.search(frame.group(1)))
        elif not (skipping and line.startswith("    ")):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


def _frames(stack: str) -> tuple[str, ...]:
    """The frame lines of the last traceback in a stack trace (where the exception was raised)."""
    last = stack.rsplit(_TRACEBACK, 1)[-1]
    return tuple(line for line in last.split("\n") if _FRAME.match(line))


@dataclass(slots=True)
class _Raised:
    """An exception already written as lines, to recognise it in the spans it propagates through."""

    kind: str
    message: str
    frames: tuple[str, ...]
    line: dict[str, Any]  # the error line
    stack_line: dict[str, Any] | None
    span_id: str | None  # the outermost span it was recorded on so far


class _LineBuilder:
    __slots__ = ("lines", "open_steps", "_raised", "_parents")

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.lines = lines
        self.open_steps: list[dict[str, Any]] = []  # outermost first
        self._raised: list[_Raised] = []
        self._parents: dict[str, str] | None = None

    def add(self, ns: int, message: str, level: int, state: str = "success", kind: str = "text") -> dict[str, Any]:
        line = {"at": ns // 1_000_000_000, "message": message, "state": state, "type": kind, "level": level, "ns": ns}
        self.lines.append(line)
        return line

    def content(self, span: Span, children: dict[str, list[Span]], level: int) -> None:
        """Lines for what happened inside ``span``: its events and child spans, in time order."""
        if not span.events:  # most spans: child spans only, no interleaving to work out
            kids = children.get(span.span_id)
            if kids:
                for child in sorted(kids, key=_start) if len(kids) > 1 else kids:
                    self.span(child, children, level)
            return
        items: list[tuple[int, int, Any]] = [(e.time_ns, 0, e) for e in span.events]
        items.extend((c.start_ns, 1, c) for c in children.get(span.span_id, ()))
        items.sort(key=lambda item: (item[0], item[1]))
        for _, is_span, item in items:
            if is_span:
                self.span(item, children, level)
            else:
                self.event(item, level, span, children)

    def span(self, span: Span, children: dict[str, list[Span]], level: int) -> None:
        start = span.start_ns
        begin = {"at": start // 1_000_000_000, "message": span.name + BEGIN, "state": "success",
                 "type": "head" if span.attributes.get(cv.HEAD) else "text", "level": level, "ns": start,
                 "span_id": span.span_id}
        self.lines.append(begin)
        if span.end_ns is None:  # a step of a running job that has not ended: no end line yet
            begin["open"] = True
            self.open_steps.append(
                {"name": span.name, "span_id": span.span_id, "at": span.start_ns / 1e9, "level": level}
            )
            self.content(span, children, level + 1)
            return
        if span.events or span.span_id in children:  # (a leaf step has no content: no call)
            self.content(span, children, level + 1)
        end_ns = span.end_ns
        failed = span.status == "error"
        self.lines.append(
            {"at": end_ns // 1_000_000_000, "message": span.name + END,
             "state": "error" if failed else "success", "type": "text", "level": level, "ns": end_ns,
             "span_id": span.span_id, "duration": (end_ns - start + 500) // 1000 / 1000}  # (ms to the µs: round(.., 3) takes 4x as long)
        )
        if failed or cv.RESULT in span.attributes:
            self.outcome(span, level)

    def outcome(self, span: Span, level: int) -> None:
        """The failure message (when no exception event said it) and the result of an ended span."""
        if span.end_ns is None:
            return
        if span.status == "error" and span.status_message and not any(
            e.name == cv.EVENT_EXCEPTION for e in span.events
        ):
            self.add(span.end_ns, span.status_message, level, state="error")
        result = span.attributes.get(cv.RESULT)
        if result is not None:
            # Which step's result it is, also once the line became a media line (an artifact).
            line = self.add(span.end_ns, RESULT + _text(result), level, kind="raw")
            line["span_id"] = span.span_id
            line["step"] = span.name

    def event(self, event: Event, level: int, span: Span | None = None,
              children: dict[str, list[Span]] | None = None) -> None:
        name, attrs, ns = event.name, event.attributes, event.time_ns
        if name == cv.EVENT_EXCEPTION:
            self.exception(event, level, span, children or {})
            return
        if name in cv.STATE_EVENTS:
            message = attrs.get("message")
            if message:
                self.add(ns, str(message), level, state=cv.STATE_EVENTS[name])
            return
        if name in (cv.EVENT_IGNORE, cv.EVENT_TAG):
            return
        state = attrs.get(cv.STATE)
        self.add(ns, name, level, state=state if state in cv.LINE_STATES else "success")
        rest = {k: v for k, v in attrs.items() if k != cv.STATE}
        if rest:
            self.add(ns, _json_attrs(rest), level, kind="raw")

    def exception(self, event: Event, level: int, span: Span | None, children: dict[str, list[Span]]) -> None:
        """An error line and the stack trace (OpenTelemetry's frames left out), once per exception.

        OpenTelemetry records an exception on every span it propagates through: the spans after
        the first add their names to the first error line's ``through`` (innermost first), and
        its stack becomes the longest one recorded, instead of repeating the lines."""
        attrs, ns = event.attributes, event.time_ns
        kind = str(attrs.get("exception.type") or "Exception")
        message = str(attrs.get("exception.message") or "")
        raw_stack = attrs.get("exception.stacktrace")
        stack = clean_stack(str(raw_stack)) if raw_stack else ""
        frames = _frames(stack)
        if span is not None:
            seen = self._propagated(kind, message, frames, span, children)
            if seen is not None:
                if seen.span_id != span.span_id:
                    seen.line.setdefault("through", []).append(span.name)
                    seen.span_id = span.span_id
                if stack and len(frames) > len(seen.frames):
                    seen.frames = frames
                    if seen.stack_line is not None:
                        seen.stack_line["message"] = stack
                return
        line = self.add(ns, f"{kind}: {message}" if message else kind, level, state="error")
        stack_line = self.add(ns, stack, level, state="error", kind="raw") if stack else None
        if span is not None:
            line["through"] = [span.name]
            self._raised.append(_Raised(kind, message, frames, line, stack_line, span.span_id))

    def _propagated(self, kind: str, message: str, frames: tuple[str, ...], span: Span,
                    children: dict[str, list[Span]]) -> _Raised | None:
        """The exception already written that this one is, seen again further out: same type
        and message, its stack ends the same way, and it was recorded inside ``span``."""
        for seen in reversed(self._raised):
            if seen.kind != kind or seen.message != message:
                continue
            if frames and seen.frames and frames[-len(seen.frames):] != seen.frames and seen.frames[-len(frames):] != frames:
                continue
            if self._inside(seen.span_id, span.span_id, children):
                return seen
        return None

    def _inside(self, span_id: str | None, outer: str, children: dict[str, list[Span]]) -> bool:
        if self._parents is None:
            self._parents = {c.span_id: parent for parent, kids in children.items() for c in kids}
        for _ in range(10_000):
            if span_id is None:
                return False
            if span_id == outer:
                return True
            span_id = self._parents.get(span_id)
        return False
