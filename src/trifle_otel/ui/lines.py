"""An execution's lines prepared for the page: rows, a waterfall of its steps, its open steps.

Plain functions over the stored lines (``{at, message, state, type, level, ns, span_id,
duration, open}``).  The structure (which end line closes which begin line) is computed
once per execution; rows are built only for the slice a page shows, so an execution of
20,000 lines costs its first screen, not all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import orjson

BEGIN = " \u21b4"  # ↴
END = " \u21b5"  # ↵
RESULT = "\u21b3 "  # ↳
FOLD_LINES = 12  # formatted JSON longer than this starts folded
PRETTY_LIMIT = 512 * 1024  # larger raw values are shown as they are


@dataclass(slots=True)
class Row:
    index: int
    level: int
    kind: str  # begin, end, text, head, raw, media, exception
    message: str
    state: str
    offset_ms: float | None = None
    duration: float | None = None
    span_id: str | None = None
    open: bool = False
    body: str | None = None  # raw: formatted JSON or text; exception: the stack
    result: bool = False  # a "↳ result" line
    head: bool = False  # a head line (a step marked as a heading)
    folded: bool = False
    size: int | None = None


@dataclass
class Structure:
    """What a page needs to know about all the lines to show any slice of them."""

    lines: Sequence[dict[str, Any]]
    base_ns: int | None
    ends: dict[str, int] = field(default_factory=dict)  # span_id -> index of its end line

    @classmethod
    def of(cls, lines: Sequence[dict[str, Any]], first_at: datetime | None) -> "Structure":
        base = int(first_at.timestamp() * 1_000_000) * 1000 if first_at is not None else None
        ends: dict[str, int] = {}
        for i, line in enumerate(lines):
            span_id = line.get("span_id")
            if span_id and str(line.get("message", "")).endswith(END):
                ends[span_id] = i
        return cls(lines, base, ends)

    def _is_stack(self, i: int) -> bool:
        """A raw error line right after an exception line (same time and level): its stack."""
        if i <= 0:
            return False
        line, before = self.lines[i], self.lines[i - 1]
        return (
            line.get("type") == "raw" and line.get("state") == "error"
            and before.get("type") == "text" and before.get("state") == "error"
            and line.get("level") == before.get("level") and line.get("ns") == before.get("ns")
        )

    def rows(self, offset: int = 0, limit: int = 500) -> list[Row]:
        """Rows for lines ``offset`` .. ``offset + limit`` (a stack joins its exception)."""
        out: list[Row] = []
        end = min(len(self.lines), offset + limit)
        i = offset
        while i < end:
            if self._is_stack(i):  # shown with the exception just before this slice
                i += 1
                continue
            row = self._row(i)
            if i + 1 < len(self.lines) and self._is_stack(i + 1):
                row.kind = "exception"
                row.body = str(self.lines[i + 1].get("message", ""))
                i += 1
            out.append(row)
            i += 1
        return out

    def _row(self, i: int) -> Row:
        line = self.lines[i]
        message = str(line.get("message", ""))
        kind = str(line.get("type") or "text")
        state = str(line.get("state") or "success")
        span_id = line.get("span_id")
        row = Row(index=i, level=_level(line), kind=kind, message=message, state=state, span_id=span_id)
        ns = line.get("ns")
        if self.base_ns is not None and isinstance(ns, int):
            row.offset_ms = (ns - self.base_ns) / 1e6
        if span_id and message.endswith(BEGIN):
            row.kind = "begin"
            row.head = kind == "head"
            end = self.ends.get(span_id)
            if end is not None:
                closing = self.lines[end]
                row.duration = closing.get("duration")
                if closing.get("state") == "error":
                    row.state = "error"
            else:
                row.open = bool(line.get("open", True))
        elif span_id and message.endswith(END):
            row.kind = "end"
            row.duration = line.get("duration")
        elif kind == "raw":
            text = message
            if text.startswith(RESULT):
                row.result = True
                text = text[len(RESULT):]
            row.body = format_raw(text)
            row.folded = row.body.count("\n") >= FOLD_LINES
        elif kind == "media":
            size = line.get("size")
            row.size = size if isinstance(size, int) else None
        return row


def _level(line: dict[str, Any]) -> int:
    level = line.get("level", 0)
    return level if isinstance(level, int) and level >= 0 else 0


def format_raw(text: str) -> str:
    """JSON objects and arrays indented; anything else as it is."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[" or len(stripped) > PRETTY_LIMIT:
        return text
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return text
    return json.dumps(value, ensure_ascii=False, indent=2)


# -- waterfall -----------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    name: str
    span_id: str
    level: int
    start_ms: float
    duration_ms: float
    state: str
    open: bool
    left: float = 0.0  # percent of the execution
    width: float = 0.0


def waterfall(structure: Structure, total_ms: float, now_ns: int, limit: int = 300) -> tuple[list[Step], int]:
    """The steps (child spans) in start order with their place on the execution's time axis;
    at most ``limit`` of them, and how many more there are.  Open steps run until now."""
    base = structure.base_ns
    lines = structure.lines
    steps: list[Step] = []
    more = 0
    if base is None:
        return steps, 0
    for line in lines:
        span_id = line.get("span_id")
        message = str(line.get("message", ""))
        if not span_id or not message.endswith(BEGIN):
            continue
        if len(steps) >= limit:
            more += 1
            continue
        ns = line.get("ns") if isinstance(line.get("ns"), int) else base
        end = structure.ends.get(span_id)
        if end is not None:
            duration = float(lines[end].get("duration") or 0.0)
            state = "error" if lines[end].get("state") == "error" else "success"
            is_open = False
        else:
            duration = max(0.0, (now_ns - ns) / 1e6)
            state = "running"
            is_open = True
        steps.append(Step(message[: -len(BEGIN)], span_id, _level(line), (ns - base) / 1e6, duration, state, is_open))
    total = max(total_ms, max((s.start_ms + s.duration_ms for s in steps), default=0.0), 1e-6)
    for s in steps:
        s.left = min(100.0, max(0.0, s.start_ms / total * 100))
        s.width = min(100.0 - s.left, max(0.3, s.duration_ms / total * 100))
    return steps, more


# -- open steps of a running execution -----------------------------------------------------


@dataclass(slots=True)
class OpenStep:
    name: str
    level: int
    started: float | None  # epoch seconds
    elapsed: float | None  # seconds


def open_steps(record: dict[str, Any], structure: Structure, now: float) -> list[OpenStep]:
    """Outermost first: from the record's ``open_steps`` when the writer keeps them, else the
    begin lines that have no end line yet."""
    out: list[OpenStep] = []
    listed = record.get("open_steps")
    if isinstance(listed, list) and listed:
        for step in listed:
            if not isinstance(step, dict):
                continue
            at = step.get("at")
            at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
            level = step.get("level")
            out.append(OpenStep(str(step.get("name", "")), level if isinstance(level, int) else 0, at,
                                max(0.0, now - at) if at is not None else None))
        return out
    if record.get("state") != "running":
        return out
    for line in structure.lines:
        span_id = line.get("span_id")
        message = str(line.get("message", ""))
        if span_id and message.endswith(BEGIN) and span_id not in structure.ends:
            ns = line.get("ns")
            at = ns / 1e9 if isinstance(ns, int) else None
            out.append(OpenStep(message[: -len(BEGIN)], _level(line), at, max(0.0, now - at) if at is not None else None))
    return out
