"""Hand-made OTLP/JSON trace requests, as an exporter in another language would send them
(by default without the span flags that say whether a parent is remote)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

_ids = itertools.count(0x1000)
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


def new_trace_id() -> str:
    return format(next(_ids), "032x")


def new_span_id() -> str:
    return format(next(_ids), "016x")


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in values.items()]


@dataclass
class S:
    """One span: ids are made when not given, times are ms after ``T0``."""

    name: str
    start_ms: float = 0
    end_ms: float = 1
    parent: "S | str | None" = None
    kind: str = "internal"
    attrs: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    span_id: str = field(default_factory=new_span_id)
    flags: int | None = None
    status: int = 0
    events: list[tuple[str, float, dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.trace_id:
            self.trace_id = self.parent.trace_id if isinstance(self.parent, S) else new_trace_id()

    def child(self, name: str, start_ms: float, end_ms: float, **options) -> "S":
        return S(name, start_ms, end_ms, parent=self, trace_id=self.trace_id, **options)

    def json(self, t0: int) -> dict[str, Any]:
        span: dict[str, Any] = {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": self.name,
            "kind": KINDS[self.kind],
            "startTimeUnixNano": str(t0 + int(self.start_ms * 1e6)),
            "endTimeUnixNano": str(t0 + int(self.end_ms * 1e6)),
            "attributes": attributes(self.attrs),
        }
        parent = self.parent.span_id if isinstance(self.parent, S) else self.parent
        if parent:
            span["parentSpanId"] = parent
        if self.flags is not None:
            span["flags"] = self.flags
        if self.status:
            span["status"] = {"code": self.status}
        if self.events:
            span["events"] = [{"name": n, "timeUnixNano": str(t0 + int(ms * 1e6)), "attributes": attributes(a)}
                              for n, ms, a in self.events]
        return span


T0 = time.time_ns() - 3600 * 10**9  # an hour ago: recent enough for every retention


def request(resource: dict[str, Any], *spans: S, t0: int = T0) -> bytes:
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": attributes(resource)},
        "scopeSpans": [{"scope": {"name": "jobs"}, "spans": [s.json(t0) for s in spans]}],
    }]})
