"""Assembly with no end signal: spans that arrive over OTLP, from any process, in any order.

The in-process processor knows when a root span ends and which parents are remote.  Over
OTLP the sidecar knows neither for sure, so this stage decides from what it sees:

- **When an execution is finished.**  Its root has arrived and nothing of its trace has come
  for ``grace`` seconds, or ``trace_timeout`` seconds after the first of its spans came
  (a trace that never goes quiet).  Spans that arrive later (a child exported in a later
  batch than its root) are *late*: the execution is assembled again with them and its
  document rewritten under the same reference; only the late spans' rules are tracked.
  Finished executions are kept for late spans up to ``trace_timeout`` seconds, while
  memory allows.
- **Local roots** (PRODUCT §3).  A span is a local root when it has no parent, or when its
  OTLP ``flags`` say the parent is remote.  When the exporter did not set those bits
  (``Span.parent_remote_known`` false), a parent seen under another resource
  (``service.instance.id``, else ``service.name`` + ``host.name`` + ``process.pid``) is
  remote, a CONSUMER or SERVER span under a PRODUCER or CLIENT parent is a local root, and
  so is a SERVER or CONSUMER span whose parent never arrives (its caller is elsewhere).
- **Running jobs.**  OTel exports a span only when it ends, so spans whose root has not
  arrived mean the job still runs: after ``grace`` a running snapshot is made with the
  steps seen so far, again whenever more arrive (at most every ``refresh`` seconds while
  they keep coming), and the spans are kept until the root comes.  Without a root or a
  start marker the snapshot's root is made up: its id is the missing parent of the
  earliest-started span (so it becomes the real reference once the root comes), its name
  says the root has not arrived; a snapshot made under an id that turns out not to be the
  root is *retracted* (listed by :meth:`retracted`, for the running record to be removed).
  A job that sends nothing for ``release_after`` seconds is let go from memory (its
  running record stays, reported stuck).
- **Start markers** from other languages: a span with attribute ``trifle.pending: true``
  is not a step but says a root has started: as a child of the root (the usual form: a
  zero-length span started inside the root, named as the job, carrying the root's
  attributes), or as the root itself (no parent, or a remote one).  The running record
  is made from it at once (after ``grace``), with the job's name and key.
- **Bounded memory.**  Written executions are kept for late spans within ``keep_spans``
  (a quarter of ``max_pending_spans`` by default).  Past ``max_pending_spans`` (pending and
  kept spans together) kept executions are let go first, then the oldest open traces are
  settled early: their finished executions are written, their running ones snapshotted
  and let go (counted as ``evicted_spans``).

Duplicate spans (an export retried by its client, a record replayed twice) are dropped by
span id.  The stage is pure: a clock is passed in, and it returns executions for the
pipeline to translate and write.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..assembly import AssemblyCounters
from ..model import Execution, Span

__all__ = ["OpenAssembler", "LateExecution", "Snapshot", "PENDING", "resource_identity"]

PENDING = "trifle.pending"  # span attribute of a start marker
UNKNOWN_ROOT = "root span not received yet"
_CALLERS = frozenset(("producer", "client"))
_CALLEES = frozenset(("server", "consumer"))
_ROOT, _LATE, _ROOTLESS = 0, 1, 2
SCAN_INTERVAL = 1.0  # seconds between scans of busy traces (timeouts, refreshes)
IDLE_SCAN_INTERVAL = 5.0  # seconds between scans of quiet traces with running jobs


@dataclass(slots=True)
class LateExecution(Execution):
    """A finished execution assembled again because ``late`` spans of it arrived."""

    late: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot(Execution):
    """A running execution's state; ``made_up_root``: its root span has not arrived and no
    marker named it (the root here is a stand-in)."""

    made_up_root: bool = False


@dataclass
class OpenCounters(AssemblyCounters):
    duplicate_spans: int = 0
    markers: int = 0
    snapshots: int = 0
    evicted_spans: int = 0
    early_executions: int = 0  # finished before their grace was over, at the memory bound
    released_spans: int = 0
    late_dropped_spans: int = 0
    retained_spans: int = 0


def resource_identity(resource: Mapping[str, Any]) -> Any:
    """Which process a resource stands for: ``service.instance.id``, else service name,
    host name and process id."""
    instance = resource.get("service.instance.id")
    if instance:
        return instance
    return (resource.get("service.name"), resource.get("host.name"), resource.get("process.pid"))


class _Done:
    __slots__ = ("root", "spans", "at")

    def __init__(self, root: Span, spans: dict[str, Span], at: float) -> None:
        self.root, self.spans, self.at = root, spans, at


class _Trace:
    __slots__ = ("trace_id", "spans", "markers", "first", "last", "changed", "snapped", "done", "done_ids", "running")

    def __init__(self, trace_id: str, now: float) -> None:
        self.trace_id = trace_id
        self.spans: dict[str, Span] = {}  # pending spans by id (ended roots included)
        self.markers: dict[str, tuple[Span, Span]] = {}  # root id -> (marker span, started root)
        self.first = now  # arrival of the oldest pending span
        self.last = now  # arrival of the newest span
        self.changed = False  # spans came since the last settling
        self.snapped = now  # when running snapshots were last made
        self.done: dict[str, _Done] = {}  # finished executions kept for late spans: root id ->
        self.done_ids: dict[str, str] = {}  # span id (roots too) -> root id of a kept execution
        self.running: dict[Any, str] = {}  # process -> id a made-up root's snapshot was made under

    def parent_of(self, span: Span) -> Span | None:
        parent_id = span.parent_span_id
        parent = self.spans.get(parent_id)  # type: ignore[arg-type]
        if parent is not None:
            return parent
        marker = self.markers.get(parent_id)  # type: ignore[arg-type]
        if marker is not None:
            return marker[1]
        owner = self.done_ids.get(parent_id)  # type: ignore[arg-type]
        if owner is not None:
            done = self.done[owner]
            return done.root if owner == parent_id else done.spans.get(parent_id)  # type: ignore[arg-type]
        return None


class OpenAssembler:
    def __init__(
        self,
        *,
        grace: float = 2.0,
        trace_timeout: float = 60.0,
        max_pending_spans: int = 200_000,
        max_spans_per_execution: int = 10_000,
        keep_spans: int | None = None,
        refresh: float = 10.0,
        release_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.trace_timeout = trace_timeout
        self.max_pending_spans = max_pending_spans
        self.max_spans_per_execution = max_spans_per_execution
        # Spans of written executions kept for late spans (a quarter of the pending bound by
        # default): at high rates the late window shrinks before memory grows.
        self.keep_spans = max_pending_spans // 4 if keep_spans is None else keep_spans
        self.refresh = refresh
        self.release_after = max(release_after, grace)
        self.clock = clock
        self.counters = OpenCounters()
        self._traces: dict[str, _Trace] = {}  # every trace held, oldest first
        self._active: "OrderedDict[str, _Trace]" = OrderedDict()  # traces with new spans, by last arrival
        self._waiting: dict[str, _Trace] = {}  # quiet traces with running jobs
        self._kept: "OrderedDict[tuple[str, str], float]" = OrderedDict()  # (trace, root) kept for late spans
        self._pending = 0
        self._retained = 0
        self._snapshots: list[Snapshot] = []
        self._retracted: list[tuple[str, str]] = []
        self._next_scan = 0.0
        self._next_idle_scan = 0.0

    @property
    def pending_spans(self) -> int:
        return self._pending

    @property
    def retained_spans(self) -> int:
        return self._retained

    # -- intake ------------------------------------------------------------------------------

    def add(self, span: Span) -> None:
        """Take one span (ended, or a start marker)."""
        self.add_many((span,))

    def add_many(self, spans: Any) -> None:
        """Take spans (ended, or start markers); one clock reading for all of them."""
        now = self.clock()
        traces = self._traces
        active = self._active
        waiting = self._waiting
        added = duplicates = 0
        for span in spans:
            trace_id = span.trace_id
            trace = traces.get(trace_id)
            if trace is None:
                trace = traces[trace_id] = _Trace(trace_id, now)
            span_id = span.span_id
            attributes = span.attributes
            if attributes and PENDING in attributes and attributes[PENDING] in (True, "true"):
                self._marker(trace, span)
            elif span_id in trace.spans or span_id in trace.done_ids:
                duplicates += 1
                continue
            else:
                if not trace.spans:
                    trace.first = now
                trace.spans[span_id] = span
                added += 1
            trace.last = now
            trace.changed = True
            if trace_id in active:
                active.move_to_end(trace_id)
            else:
                active[trace_id] = trace
                waiting.pop(trace_id, None)
        self._pending += added
        self.counters.spans += added + duplicates
        self.counters.duplicate_spans += duplicates

    def start(self, root: Span, source: Any = None) -> None:
        """A local root has started (a ``(START, span)`` intake item): as a marker."""
        self.add(Span(root.trace_id, root.span_id, root.name, root.start_ns, root.start_ns, root.parent_span_id,
                      root.parent_remote, root.kind, root.status, root.status_message, {**root.attributes, PENDING: True},
                      root.events, root.links, root.resource, root.scope, True))

    def open(self, trace_id: str, span_id: str, source: Any) -> None:
        """Started steps are not sent over OTLP: nothing to record."""

    def _marker(self, trace: _Trace, marker: Span) -> None:
        self.counters.markers += 1
        attributes = {k: v for k, v in marker.attributes.items() if k != PENDING}
        if marker.parent_span_id is not None and not (marker.parent_remote_known and marker.parent_remote):
            root_id, parent_id, remote = marker.parent_span_id, None, False  # a child of the root
        else:
            root_id, parent_id, remote = marker.span_id, marker.parent_span_id, marker.parent_remote  # the root itself
        if root_id in trace.spans or root_id in trace.done_ids:
            return  # the root itself is here already
        root = Span(marker.trace_id, root_id, marker.name, marker.start_ns, None, parent_id, remote, marker.kind,
                    "unset", "", attributes, (), marker.links, marker.resource, marker.scope, True)
        trace.markers[root_id] = (marker, root)

    # -- output ------------------------------------------------------------------------------

    def collect(self, *, ignore_grace: bool = False, final: bool = False) -> list[Execution]:
        """Executions finished now (first time, or again with late spans: ``LateExecution``).

        ``ignore_grace`` / ``final`` settle every trace now (a flush, a shutdown): executions
        whose root has arrived are finished; running ones are snapshotted and kept (a
        checkpoint carries them forward)."""
        now = self.clock()
        out: list[Execution] = []
        force = ignore_grace or final
        active = self._active
        grace = self.grace
        while active:
            trace_id, trace = next(iter(active.items()))
            if not force and trace.last + grace > now:
                break
            del active[trace_id]
            self._settle(trace, now, out, finish=True)
        if now >= self._next_scan:
            self._next_scan = now + SCAN_INTERVAL
            for trace in list(active.values()):  # busy traces: timed out, or due a refresh
                if now - trace.first >= self.trace_timeout:
                    self._settle(trace, now, out, finish=True, busy=True)
                elif now - trace.snapped >= self.refresh:
                    self._settle(trace, now, out, finish=False, busy=True)
        if now >= self._next_idle_scan:
            self._next_idle_scan = now + IDLE_SCAN_INTERVAL
            self._release_idle(now)
        self._expire_kept(now)
        if self._pending > self.max_pending_spans:
            self._evict(now, out)
            self._expire_kept(now)
        self.counters.executions += sum(1 for e in out if type(e) is Execution)
        return out

    def running(self, refresh: Any = None, only: Any = None) -> list[Snapshot]:
        """Running snapshots made since the last call (the arguments are the in-process
        live stage's and are not used: over OTLP a snapshot is due when spans came)."""
        out, self._snapshots = self._snapshots, []
        self.counters.snapshots += len(out)
        return out

    def retracted(self) -> list[tuple[str, str]]:
        """(trace id, root id) of running snapshots made under an id that turned out not to
        be the root's: their running records should go."""
        out, self._retracted = self._retracted, []
        return out

    def carry(self) -> list[Span]:
        """Every span still held for an open execution, start markers included (what a
        checkpoint writes forward into the log)."""
        out: list[Span] = []
        for trace in self._traces.values():
            out.extend(trace.spans.values())
            out.extend(marker for marker, _ in trace.markers.values())
        return out

    def drop_running(self, trace_id: str, root_id: str) -> int:
        """Let go of a running execution whose reference is a stored, finished execution's:
        its spans came after that execution left memory (a restart in between) and cannot
        be assembled into it any more.  Counted as ``late_dropped_spans``."""
        trace = self._traces.get(trace_id)
        if trace is None:
            return 0
        dropped = 0
        groups = self._groups(trace)[0]
        marked = trace.markers.pop(root_id, None)
        for key, spans in groups.items():
            if (key[0] == _ROOTLESS and self._made_up_id(spans) == root_id) or (marked and key == (_ROOT, root_id)):
                for span in spans:
                    del trace.spans[span.span_id]
                dropped += len(spans)
        trace.running = {p: r for p, r in trace.running.items() if r != root_id}
        self._pending -= dropped
        self.counters.late_dropped_spans += dropped
        if not trace.spans and not trace.markers:
            self._waiting.pop(trace_id, None)
        self._forget_if_empty(trace)
        return dropped

    # -- settling a trace ---------------------------------------------------------------------

    def _is_root(self, span: Span, trace: _Trace) -> bool:
        if span.parent_span_id is None:
            return True
        if span.parent_remote_known:
            return span.parent_remote
        parent = trace.parent_of(span)
        if parent is None:
            return span.kind in _CALLEES  # its caller is elsewhere
        if span.kind in _CALLEES and parent.kind in _CALLERS:
            return True
        return span.resource is not parent.resource and resource_identity(span.resource) != resource_identity(parent.resource)

    def _groups(self, trace: _Trace) -> tuple[dict[tuple, list[Span]], dict[str, Span]]:
        """The trace's pending spans by execution: ``(_ROOT, root id)`` (an arrived or
        marked root), ``(_LATE, root id)`` (a kept execution), ``(_ROOTLESS, process)``."""
        spans = trace.spans
        markers = trace.markers
        is_root = self._is_root
        roots = {}
        for sid, s in spans.items():
            if s.parent_span_id is None or (s.parent_remote if s.parent_remote_known else is_root(s, trace)) or sid in markers:
                roots[sid] = s
        done_ids = trace.done_ids
        owner: dict[str, tuple] = {}
        groups: dict[tuple, list[Span]] = {}
        limit = len(spans)
        for sid, span in spans.items():
            if sid in roots or sid in owner:
                continue
            chain = [span]
            parent_id = span.parent_span_id
            while True:
                if parent_id in roots or parent_id in markers:
                    key: tuple = (_ROOT, parent_id)
                    break
                known = owner.get(parent_id)  # type: ignore[arg-type]
                if known is not None:
                    key = known
                    break
                kept = done_ids.get(parent_id)  # type: ignore[arg-type]
                if kept is not None:
                    key = (_LATE, kept)
                    break
                parent = spans.get(parent_id)  # type: ignore[arg-type]
                if parent is None or len(chain) >= limit:  # missing (or a cycle of parents)
                    key = (_ROOTLESS, resource_identity(chain[-1].resource))
                    break
                chain.append(parent)
                parent_id = parent.parent_span_id
            members = groups.get(key)
            if members is None:
                members = groups[key] = []
            for member in chain:
                owner[member.span_id] = key
            members.extend(chain)
        return groups, roots

    @staticmethod
    def _made_up_id(spans: list[Span]) -> str:
        """The id a made-up root gets: the missing parent of the earliest-started span whose
        parent is not here (most likely the first step, a child of the real root)."""
        ids = {s.span_id for s in spans}
        tops = [s for s in spans if s.parent_span_id not in ids]
        top = min(tops or spans, key=lambda s: (s.start_ns, s.span_id))
        return top.parent_span_id or top.span_id

    def _settle(self, trace: _Trace, now: float, out: list[Execution], *, finish: bool, busy: bool = False,
                evict: bool = False) -> None:
        """Partition a trace's pending spans into executions; finish those whose root came
        (when ``finish``), snapshot the running ones (when spans came since the last time)."""
        groups, roots = self._groups(trace)
        changed = trace.changed
        snapshot = changed or evict
        by_root: dict[str, list[Span]] = {root_id: [] for root_id in roots}
        running: dict[str, list[Span]] = {}  # marked root id -> spans
        made_up: dict[Any, list[Span]] = {}  # process -> spans
        for key, members in groups.items():
            kind, ident = key
            if kind == _ROOT:
                (by_root if ident in by_root else running).setdefault(ident, []).extend(members)
            elif kind == _LATE:
                if finish:
                    self._late(trace, ident, members, now, out)
            else:
                made_up.setdefault(ident, []).extend(members)
        for root_id in trace.markers:
            if root_id not in by_root:
                running.setdefault(root_id, [])
        # Spans without a root join the marked root of the same process, when there is one.
        if made_up and running:
            marked = {resource_identity(trace.markers[r][1].resource): r for r in running}
            for process in list(made_up):
                if process in marked:
                    running[marked[process]].extend(made_up.pop(process))
        previous = trace.running
        trace.running = {}
        if finish:  # (a busy trace's arrived roots wait for quiet, or for the trace timeout)
            for root_id, members in by_root.items():
                trace.markers.pop(root_id, None)
                self._finish(trace, roots[root_id], members, now, out)
        if snapshot:
            for root_id, members in running.items():
                self._snapshots.append(Snapshot(trace.markers[root_id][1], list(members)))
            for process, members in made_up.items():
                root_id = self._made_up_id(members)
                self._snapshots.append(Snapshot(self._stand_in(trace, root_id, members), list(members), True))
                trace.running[process] = root_id
        else:
            for process in made_up:
                if process in previous:
                    trace.running[process] = previous[process]
        # A made-up root's snapshot under an id that is not the execution's any more: retract.
        live_ids = set(trace.running.values()) | set(running) | set(roots) | set(trace.done)
        for process, root_id in previous.items():
            if root_id not in live_ids:
                self._retracted.append((trace.trace_id, root_id))
        if evict:
            for members in (*running.values(), *made_up.values()):
                for span in members:
                    del trace.spans[span.span_id]
                self._pending -= len(members)
                self.counters.evicted_spans += len(members)
            trace.markers.clear()
            trace.running = {}
        trace.changed = False
        trace.snapped = now
        if trace.spans:
            trace.first = now if finish else trace.first
        if busy:
            return  # still in the active order
        if trace.spans or trace.markers:
            self._waiting[trace.trace_id] = trace
        else:
            self._waiting.pop(trace.trace_id, None)
            self._forget_if_empty(trace)

    def _stand_in(self, trace: _Trace, root_id: str, members: list[Span]) -> Span:
        first = min(members, key=lambda s: s.start_ns)
        service = first.resource.get("service.name") or "unknown service"
        return Span(trace.trace_id, root_id, f"{service}: {UNKNOWN_ROOT}", first.start_ns, None, None, False,
                    "internal", "unset", "", {}, (), (), first.resource, first.scope, True)

    def _finish(self, trace: _Trace, root: Span, members: list[Span], now: float, out: list[Execution]) -> None:
        del trace.spans[root.span_id]
        for span in members:
            del trace.spans[span.span_id]
        self._pending -= 1 + len(members)
        kept = {s.span_id: s for s in members}
        trace.done[root.span_id] = _Done(root, kept, now)
        trace.done_ids[root.span_id] = root.span_id
        for span_id in kept:
            trace.done_ids[span_id] = root.span_id
        self._retained += 1 + len(members)
        self._kept[(trace.trace_id, root.span_id)] = now
        out.append(Execution(root, self._truncated(members)))

    def _late(self, trace: _Trace, root_id: str, members: list[Span], now: float, out: list[Execution]) -> None:
        done = trace.done[root_id]
        for span in members:
            del trace.spans[span.span_id]
            done.spans[span.span_id] = span
            trace.done_ids[span.span_id] = root_id
        self._pending -= len(members)
        self._retained += len(members)
        self.counters.late_spans += len(members)
        out.append(LateExecution(done.root, self._truncated(list(done.spans.values())), late=members))

    def _truncated(self, spans: list[Span]) -> list[Span]:
        limit = self.max_spans_per_execution
        if len(spans) > limit:
            spans.sort(key=lambda s: s.start_ns)
            self.counters.truncated_spans += len(spans) - limit
            spans = spans[:limit]
        return spans

    # -- memory ----------------------------------------------------------------------------

    def _forget_if_empty(self, trace: _Trace) -> None:
        if not trace.spans and not trace.markers and not trace.done:
            self._traces.pop(trace.trace_id, None)
            self._active.pop(trace.trace_id, None)
            self._waiting.pop(trace.trace_id, None)

    def _forget_kept(self, trace_id: str, root_id: str) -> None:
        trace = self._traces.get(trace_id)
        if trace is None:
            return
        done = trace.done.pop(root_id, None)
        if done is None:
            return
        trace.done_ids.pop(root_id, None)
        for span_id in done.spans:
            trace.done_ids.pop(span_id, None)
        self._retained -= 1 + len(done.spans)
        self._forget_if_empty(trace)

    def _expire_kept(self, now: float) -> None:
        kept = self._kept
        while kept:
            (trace_id, root_id), at = next(iter(kept.items()))
            if now - at < self.trace_timeout and self._retained <= self.keep_spans and (
                    self._retained + self._pending <= self.max_pending_spans):
                break
            del kept[(trace_id, root_id)]
            self._forget_kept(trace_id, root_id)
        self.counters.retained_spans = self._retained

    def _evict(self, now: float, out: list[Execution]) -> None:
        """Pending spans past the bound: settle the oldest traces now and let go of them."""
        target = int(self.max_pending_spans * 0.9)
        for trace in list(self._traces.values()):
            if self._pending <= target:
                break
            if not trace.spans and not trace.markers:
                continue
            self._active.pop(trace.trace_id, None)
            before = len(out)
            self._settle(trace, now, out, finish=True, evict=True)
            self.counters.early_executions += len(out) - before

    def _release_idle(self, now: float) -> None:
        """Running jobs that sent nothing for ``release_after``: let go (their record stays)."""
        for trace in list(self._waiting.values()):
            if now - trace.last < self.release_after:
                continue
            released = len(trace.spans)
            trace.spans.clear()
            trace.markers.clear()
            trace.running = {}
            self._pending -= released
            self.counters.released_spans += released
            self._waiting.pop(trace.trace_id, None)
            self._forget_if_empty(trace)
