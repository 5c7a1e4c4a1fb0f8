"""Live stage of open-ended assembly (the sidecar): running records from what has arrived.

The open assembler decides when a running job's snapshot is due (its spans came and then a
``grace`` of quiet).  Before the first running record under a reference is written, the
trace index is asked whether that reference is a finished execution already: spans that
arrive after their execution was written and then let go from memory (a restart in
between) must not turn its stored document back into a running one.  Such spans cannot be
assembled into it any more; the assembler drops them and counts them.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..model import Execution
from ..sinks import TraceSink
from .open_assembly import OpenAssembler, Snapshot

logger = logging.getLogger("trifle_otel")

MAX_CHECKED = 100_000  # references known to be running, remembered (then forgotten all at once)


class RunningRecords:
    def __init__(self, open_sink: Callable[[], TraceSink]) -> None:
        self.open_sink = open_sink
        self.checked: set[str] = set()

    def started(self, root: object) -> None:
        """(Starts come as start markers through the assembler.)"""

    def due(self, assembler: OpenAssembler) -> list[Execution]:
        out: list[Execution] = []
        for snapshot in assembler.running():
            reference = snapshot.reference
            if reference not in self.checked:
                verdict = self._stored_state(reference)
                if verdict is None:
                    continue  # the index cannot be read now: the next snapshot asks again
                if verdict not in ("running", ""):
                    assembler.drop_running(snapshot.root.trace_id, snapshot.root.span_id)
                    logger.info("trifle-otel: spans of finished execution %s came after it left memory; dropped", reference)
                    continue
                if len(self.checked) >= MAX_CHECKED:
                    self.checked.clear()
                self.checked.add(reference)
            out.append(snapshot)
        return out

    def _stored_state(self, reference: str) -> str | None:
        """The state of the stored record ("" when there is none), None when unknown."""
        try:
            record = self.open_sink().index.get(reference)
        except Exception as exc:
            logger.debug("trifle-otel cannot read the trace index: %s", exc)
            return None
        if record is None or record.get("reference") != reference:
            return ""
        return str(record.get("state") or "")


__all__ = ["RunningRecords", "Snapshot"]
