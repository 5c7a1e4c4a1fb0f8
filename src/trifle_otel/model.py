"""The neutral span model every ingest path produces.

The in-process processor converts SDK ``ReadableSpan`` objects, the OTLP receivers convert
protobuf/JSON payloads; everything after ingest (assembly, translation, rules, sinks) sees
only these plain objects.  Ids are lower-case hex strings (the form they take in documents
and in OTLP/JSON), times are integer nanoseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

Attributes = Mapping[str, Any]



@dataclass(slots=True)
class Event:
    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Link:
    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int | None = None
    parent_span_id: str | None = None
    parent_remote: bool = False
    kind: str = "internal"
    status: str = "unset"
    status_message: str = ""
    attributes: Attributes = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    links: tuple[Link, ...] = ()
    resource: Attributes = field(default_factory=dict)
    scope: str = ""
    # False when the sender did not say whether the parent is remote (OTLP span flags
    # without bit 0x100): ``parent_remote`` is then a guess for assembly to refine.
    parent_remote_known: bool = True

    @property
    def is_local_root(self) -> bool:
        """A span with no parent, or whose parent lives in another process (remote)."""
        return self.parent_span_id is None or self.parent_remote

    @property
    def ended(self) -> bool:
        return self.end_ns is not None

    @property
    def duration_ms(self) -> float | None:
        if self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(slots=True)
class Execution:
    """One job run: a local root span and the descendants assembled under it.

    ``spans`` holds the ended descendants (never the root).  While the root is still
    running (live mode), ``root.end_ns`` is ``None`` and ``spans`` holds what has ended so far.
    """

    root: Span
    spans: list[Span] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.root.end_ns is None

    @property
    def reference(self) -> str:
        return reference_for(self.root.trace_id, self.root.span_id)


def reference_for(trace_id: str, span_id: str) -> str:
    """Deterministic execution reference (root span id, then trace id): a retried write never
    makes a second record, and the first 16 characters already identify the execution."""
    return f"{span_id}{trace_id}"
