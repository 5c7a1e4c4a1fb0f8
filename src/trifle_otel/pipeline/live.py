"""Live stage: running records for executions whose root has started but not ended.

A new root's record goes out with the next write (so a job shows as ``running`` within a
second); every running record is refreshed each ``live_interval`` with the steps ended so
far, the open ones and the root's latest attributes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable

from ..assembly import Assembler
from ..model import Execution, Span


MAX_OPEN_STEPS = 100_000  # steps started and not ended that are remembered (oldest forgotten)


class LiveRecords:
    def __init__(
        self, interval: float, refresh: Callable[[Any], Span] | None, key: Callable[[Any], Hashable] | None = None
    ) -> None:
        self.interval = interval
        self.refresh = refresh
        self.key = key
        self.next_at = time.monotonic() + interval
        self.new_roots: set[tuple[str, str]] = set()
        # Steps that started and have not ended, as their sources: converted only when a
        # running record is made, so a short step costs an entry in and out of a dict.
        self.opens: dict[Hashable, Any] = {}

    def started(self, root: Span) -> None:
        self.new_roots.add((root.trace_id, root.span_id))

    def opened(self, source: Any) -> None:
        opens = self.opens
        if len(opens) >= MAX_OPEN_STEPS:  # ends lost (a full intake): forget the oldest
            for stale in list(opens)[: MAX_OPEN_STEPS // 10]:
                del opens[stale]
        opens[self.key(source)] = source  # type: ignore[misc]

    def closed(self, source: Any) -> None:
        self.opens.pop(self.key(source), None)  # type: ignore[misc]

    def _open_steps(self, assembler: Assembler) -> dict[str, list[Span]]:
        """The open steps by trace id; those of traces with no running root are forgotten."""
        steps: dict[str, list[Span]] = {}
        for key, source in list(self.opens.items()):
            try:
                span = self.refresh(source) if self.refresh is not None else source
            except Exception:
                del self.opens[key]
                continue
            if not assembler.is_running(span.trace_id):
                del self.opens[key]
            elif span.end_ns is None:
                steps.setdefault(span.trace_id, []).append(span)
        return steps

    def due(self, assembler: Assembler) -> list[Execution]:
        """Snapshots to write this cycle: every running one at the interval, else new ones."""
        now = time.monotonic()
        new, self.new_roots = self.new_roots, set()
        if now >= self.next_at:
            self.next_at = now + self.interval
            return assembler.running(self.refresh, steps=self._open_steps(assembler))
        if not new:
            return []
        return assembler.running(self.refresh, only=new, steps=self._open_steps(assembler) if self.opens else None)
