"""Assembly of ended spans into executions (a local root span and its descendants).

Spans arrive in the order they end, children normally before their root.  The assembler
keeps the pending spans of each trace indexed by parent, and when a local root has ended
(and its grace period has passed, for late children) it collects the root's subtree.
Spans whose root never shows up are dropped after ``orphan_timeout`` and counted; the
number of pending spans is bounded so an endless stream of orphans cannot grow memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .model import Execution, Span

END_LOST_AFTER = 60.0  # seconds a running root may look ended before its end counts as lost


class _Trace:
    """What is pending of one trace (a plain slotted class: one is made per trace)."""

    __slots__ = ("children", "started", "ended", "touched", "pending", "ended_unseen")

    def __init__(self, touched: float) -> None:
        self.children: dict[str, list[Span]] = {}  # parent span id -> ended children
        self.started: dict[str, tuple[Span, Any]] = {}  # running roots: (span, source)
        self.ended: dict[str, tuple[Span, float]] = {}  # root -> (span, ready_at)
        self.touched = touched
        self.pending = 0
        self.ended_unseen: dict[str, float] = {}  # running root -> when seen ended


@dataclass
class AssemblyCounters:
    spans: int = 0
    executions: int = 0
    orphan_spans: int = 0
    overflow_spans: int = 0
    truncated_spans: int = 0
    late_spans: int = 0


class Assembler:
    def __init__(
        self,
        *,
        grace: float = 0.0,
        orphan_timeout: float = 300.0,
        max_pending_spans: int = 200_000,
        max_spans_per_execution: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.orphan_timeout = orphan_timeout
        self.max_pending_spans = max_pending_spans
        self.max_spans_per_execution = max_spans_per_execution
        self.clock = clock
        self.counters = AssemblyCounters()
        self._traces: dict[str, _Trace] = {}
        self._pending = 0
        self._forced: dict[str, float] = {}  # roots finished without their end -> when

    @property
    def pending_spans(self) -> int:
        return self._pending

    def start(self, root: Span, source: Any = None) -> None:
        """Record that a local root span has started (live mode only).  ``source`` is what
        it was converted from (the SDK span), so snapshots can read its latest attributes."""
        trace = self._trace(root.trace_id)
        trace.started[root.span_id] = (root, source)

    def is_running(self, trace_id: str) -> bool:
        """Whether a local root of this trace has started and not ended (live mode)."""
        trace = self._traces.get(trace_id)
        return trace is not None and bool(trace.started)

    def add(self, span: Span) -> None:
        """Take one ended span."""
        self.counters.spans += 1
        if span.is_local_root and self._forced.pop(span.span_id, None) is not None:
            self.counters.late_spans += 1  # its execution was already finished without it
            return
        trace = self._trace(span.trace_id)
        if span.is_local_root:
            trace.started.pop(span.span_id, None)
            trace.ended[span.span_id] = (span, self.clock() + self.grace)
            return
        if self._pending >= self.max_pending_spans:
            self.counters.overflow_spans += 1
            return
        siblings = trace.children.get(span.parent_span_id)  # type: ignore[arg-type]
        if siblings is None:
            trace.children[span.parent_span_id] = [span]  # type: ignore[index]
        else:
            siblings.append(span)
        trace.pending += 1
        self._pending += 1

    def collect(self, *, ignore_grace: bool = False, final: bool = False) -> list[Execution]:
        """Executions whose root has ended and whose grace period is over.

        ``ignore_grace`` takes every ended root now (a flush); ``final`` also drops the spans
        left without a root (shutdown), counting them as orphans.
        """
        now = self.clock()
        done: list[Execution] = []
        for trace_id in list(self._traces):
            trace = self._traces[trace_id]
            for root_id, (root, ready_at) in list(trace.ended.items()):
                if ignore_grace or final or ready_at <= now:
                    del trace.ended[root_id]
                    done.append(Execution(root, self._take_subtree(trace, root_id)))
            if not trace.ended and (final or not trace.started):
                if trace.pending == 0:
                    del self._traces[trace_id]
                elif final or now - trace.touched > self.orphan_timeout:
                    self.counters.orphan_spans += trace.pending
                    self._pending -= trace.pending
                    del self._traces[trace_id]
        if self._forced:
            self._forced = {k: t for k, t in self._forced.items() if now - t < self.orphan_timeout}
        self.counters.executions += len(done)
        return done

    def running(
        self,
        refresh: Callable[[Any], Span] | None = None,
        only: set[tuple[str, str]] | None = None,
        steps: dict[str, list[Span]] | None = None,
    ) -> list[Execution]:
        """Snapshots of the executions whose root is still running: the steps ended so far
        and ``steps``' open ones (by trace id, ``end_ns`` None).  ``only``: just these
        (trace id, root id).

        ``refresh`` re-reads a root from its source: attributes set after the start (a job's
        name, its customer) show in the running record as soon as they are set.
        """
        out = []
        if only is not None:
            traces = [self._traces[t] for t in {t for t, _ in only} if t in self._traces]
        else:
            traces = list(self._traces.values())
        for trace in traces:
            for root_id, (root, source) in list(trace.started.items()):
                if only is not None and (root.trace_id, root_id) not in only:
                    continue
                if refresh is not None and source is not None:
                    try:
                        root = refresh(source)
                    except Exception:
                        pass
                    if root.end_ns is not None:
                        # It ended, but its end has not reached us: on the way (a slow
                        # processor before ours), or dropped from a full intake.  Still
                        # missing a minute later, it was dropped: finish the execution from
                        # what we have rather than keep it running forever.
                        seen = trace.ended_unseen.setdefault(root_id, self.clock())
                        if self.clock() - seen >= END_LOST_AFTER:
                            self.add(root)
                            self._forced[root_id] = self.clock()
                        continue
                out.append(Execution(root, self._subtree(trace, root_id, (steps or {}).get(root.trace_id, ()))))
        return out

    # -- internals ---------------------------------------------------------------------

    def _trace(self, trace_id: str) -> _Trace:
        now = self.clock()
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace(now)
        else:
            trace.touched = now
        return trace

    def _subtree(self, trace: _Trace, root_id: str, open_steps: Iterable[Span] = ()) -> list[Span]:
        """Ended and open descendants of a running root (open ones with ``end_ns`` None)."""
        open_by_parent: dict[str, list[Span]] = {}
        for span in open_steps:
            open_by_parent.setdefault(span.parent_span_id, []).append(span)  # type: ignore[arg-type]
        out: list[Span] = []
        stack = [root_id]
        while stack:
            parent = stack.pop()
            for child in (*trace.children.get(parent, ()), *open_by_parent.get(parent, ())):
                out.append(child)
                stack.append(child.span_id)
        return out

    def _take_subtree(self, trace: _Trace, root_id: str) -> list[Span]:
        out: list[Span] = []
        stack = [root_id]
        while stack:
            children = trace.children.pop(stack.pop(), None)
            if not children:
                continue
            out.extend(children)
            stack.extend(c.span_id for c in children)
        trace.pending -= len(out)
        self._pending -= len(out)
        limit = self.max_spans_per_execution
        if len(out) > limit:
            out.sort(key=lambda s: s.start_ns)
            self.counters.truncated_spans += len(out) - limit
            out = out[:limit]
        return out
