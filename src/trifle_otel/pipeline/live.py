"""Live stage: running records for executions whose root has started but not ended.

A new root's record goes out with the next write (so a job shows as ``running`` within a
second); every running record is refreshed each ``live_interval`` with the steps ended so
far, the open ones and the root's latest attributes.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..assembly import Assembler
from ..model import Execution, Span


class LiveRecords:
    def __init__(self, interval: float, refresh: Callable[[Any], Span] | None) -> None:
        self.interval = interval
        self.refresh = refresh
        self.next_at = time.monotonic() + interval
        self.new_roots: set[tuple[str, str]] = set()

    def started(self, root: Span) -> None:
        self.new_roots.add((root.trace_id, root.span_id))

    def due(self, assembler: Assembler) -> list[Execution]:
        """Snapshots to write this cycle: every running one at the interval, else new ones."""
        now = time.monotonic()
        new, self.new_roots = self.new_roots, set()
        if now >= self.next_at:
            self.next_at = now + self.interval
            return assembler.running(self.refresh)
        if not new:
            return []
        return [e for e in assembler.running(self.refresh, only=new)]
