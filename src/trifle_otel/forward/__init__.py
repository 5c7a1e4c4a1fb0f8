"""Forwarding: the sidecar passes every request it accepted on to the user's OTLP backends.

``target`` reads the config's ``forward:`` list; ``queue`` keeps each target's requests on
disk; ``encoding`` turns a received request into the target's form (the same bytes when it
can); ``senders`` speak HTTP or gRPC; ``policy`` decides between done, retry and drop;
``forwarder`` runs one target's thread.  :class:`Forwarding` ties them to the sidecar:
``offer`` from the receivers (a file append per target), ``stop`` at shutdown.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from .forwarder import Forwarder, Sender
from .queue import SEGMENT_HEADER, ForwardQueue
from .senders import make_sender
from .target import ForwardTarget, parse_targets

__all__ = ["Forwarding", "ForwardTarget", "parse_targets"]

logger = logging.getLogger("trifle_otel")


class Forwarding:
    """Every target of one sidecar, each with its queue under ``<home>/forward/<name>``."""

    def __init__(self, targets: list[ForwardTarget], directory: Path,
                 sender_factory: Callable[[ForwardTarget], Sender] = make_sender) -> None:
        self.directory = Path(directory)
        self.forwarders: list[Forwarder] = []
        try:
            for target in targets:
                queue = ForwardQueue(self.directory / target.name, target.max_queue_bytes)
                senders = []
                try:
                    senders.extend(sender_factory(target) for _ in range(target.max_in_flight))
                except BaseException:
                    for sender in senders:
                        sender.close()
                    queue.close()
                    raise
                self.forwarders.append(Forwarder(target, queue, senders))
        except BaseException:
            for forwarder in self.forwarders:
                for sender in forwarder.senders:
                    sender.close()
                forwarder.queue.close()
            raise
        self._last_failure_log = 0.0
        self._warn_orphans({t.name for t in targets})
        # requests left in the queues by the last run, as found at start (sent first)
        self.queued_at_start = {f.target.name: f.queue.pending()[0] for f in self.forwarders}

    def _warn_orphans(self, names: set[str]) -> None:
        """A queue left by a target no longer configured is kept, not sent: say so."""
        try:
            orphans = [p for p in self.directory.iterdir() if p.is_dir() and p.name not in names
                       and any(f.stat().st_size > len(SEGMENT_HEADER) for f in p.glob("q-*.log"))]
        except OSError:
            return
        for path in sorted(orphans):
            logger.warning("trifle-otel: %s holds requests for a forward target no longer configured ('%s'); "
                           "they are not sent: add the target back to send them, or delete the directory", path, path.name)

    def start(self) -> "Forwarding":
        for forwarder in self.forwarders:
            forwarder.start()
        return self

    def offer(self, record: bytes, spans: int) -> None:
        """Queue an accepted request for every target.  Never raises: a queue that cannot
        be written (a full disk) drops the request for that target, counted and logged."""
        for forwarder in self.forwarders:
            try:
                forwarder.queue.put(record, spans)
            except Exception as exc:  # (a full disk: StoreError) ingest goes on regardless
                forwarder.not_queued(spans, exc)
                now = time.monotonic()
                if now - self._last_failure_log > 60.0:
                    self._last_failure_log = now
                    logger.error("trifle-otel: forwarding to %s: %s; the request is not forwarded", forwarder.target.name, exc)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Give the targets up to ``drain_timeout`` seconds to send what is queued (not
        waiting for one that is failing), then stop; the rest waits on disk."""
        deadline = time.monotonic() + drain_timeout
        for forwarder in self.forwarders:
            forwarder.drain(deadline)
        for forwarder in self.forwarders:
            forwarder.signal_stop()
        deadline = time.monotonic() + 2.0  # the threads notice within a moment; none waits for another
        for forwarder in self.forwarders:
            forwarder.stop(deadline)

    def metrics(self) -> list[dict]:
        return [forwarder.metrics() for forwarder in self.forwarders]

    def __bool__(self) -> bool:
        return bool(self.forwarders)
