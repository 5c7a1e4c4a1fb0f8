"""One target's sender thread: its queue, in order, to its backend, until it answers.

Each target has its own queue and thread, so a slow or dead backend holds back only its
own deliveries: ingest appends to the queue and never waits for a backend.  The head of
the queue is sent again and again (after the backend's ``Retry-After`` / ``RetryInfo``,
else an exponential backoff) until it is delivered or refused for good; requests behind
it wait their turn, so a backend receives them in the order they were received.

Logs are for people at 3 a.m.: one warning when a target starts failing and one line
when it delivers again, not one per retry; refused requests are logged with the
backend's message at most once a minute per target, with how many more there were.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import OTLPDecodeError
from .policy import Outcome, backoff
from .queue import ForwardQueue, QueuedRequest
from .target import ForwardTarget

__all__ = ["Forwarder", "ForwardCounters", "Sender"]

logger = logging.getLogger("trifle_otel")

LOG_EVERY = 60.0  # seconds between log lines about refused requests, per target


class Sender(Protocol):
    def send(self, record: bytes) -> Outcome: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class ForwardCounters:
    requests_sent: int = 0
    spans_sent: int = 0
    retries: int = 0
    rejected_spans: int = 0  # delivered, but refused by the backend (partial_success)
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> [requests, spans]
    last_error: str = ""
    last_error_time: float = 0.0  # wall-clock seconds

    def drop(self, reason: str, requests: int, spans: int) -> None:
        counts = self.dropped.setdefault(reason, [0, 0])
        counts[0] += requests
        counts[1] += spans


class Forwarder:
    def __init__(self, target: ForwardTarget, queue: ForwardQueue, sender: Sender, *,
                 rng: random.Random | None = None) -> None:
        self.target = target
        self.queue = queue
        self.sender = sender
        self.counters = ForwardCounters()
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None  # monotonic time of the first failure in a row
        self._attempts = 0  # failed attempts of the head request
        self._sending = False
        self._last_log = 0.0
        self._unlogged = 0

    def start(self) -> "Forwarder":
        self._thread = threading.Thread(target=self._run, name=f"trifle-otel-forward-{self.target.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.queue.peek(timeout=0.5)
            except Exception:
                logger.exception("trifle-otel: forwarding to %s: reading its queue failed", self.target.name)
                self._stop.wait(1.0)
                continue
            if request is None:
                continue
            self._deliver(request)

    def _deliver(self, request: QueuedRequest) -> None:
        while not self._stop.is_set():
            self._sending = True
            try:
                outcome = self.sender.send(request.payload)
            except OTLPDecodeError as exc:
                outcome = Outcome("drop", "unreadable", f"the queued request cannot be read: {exc}")
            except Exception as exc:  # a bug must not stop the queue: count it, log it, go on
                logger.exception("trifle-otel: forwarding to %s failed unexpectedly", self.target.name)
                outcome = Outcome("drop", "internal_error", str(exc) or type(exc).__name__)
            finally:
                self._sending = False
            if self._stop.is_set() and not outcome.delivered:
                return  # cut short by stop(): sent again after the next start
            if outcome.action == "retry":
                self._attempts += 1
                self.counters.retries += 1
                self._note_error(outcome)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    logger.warning("trifle-otel: forwarding to %s is failing (%s); retrying, queued requests wait on disk",
                                   self.target.name, _said(outcome))
                delay = outcome.delay if outcome.delay is not None else backoff(
                    self._attempts, self.target.initial_interval, self.target.max_interval, self._rng)
                if self._stop.wait(delay):
                    return
                continue
            self._attempts = 0
            if self._failing_since is not None:
                logger.warning("trifle-otel: forwarding to %s delivers again after %.1f s",
                               self.target.name, time.monotonic() - self._failing_since)
                self._failing_since = None
            if outcome.delivered:
                self.counters.requests_sent += 1
                self.counters.spans_sent += request.spans
                if outcome.rejected_spans:
                    self.counters.rejected_spans += outcome.rejected_spans
                    self._log_refusal(f"refused {outcome.rejected_spans} span(s) of a request: {outcome.message or 'no message'}")
            else:
                self.counters.drop(outcome.reason, 1, request.spans)
                self._note_error(outcome)
                self._log_refusal(f"refused a request of {request.spans} span(s) for good ({_said(outcome)}); it is dropped")
            self.queue.done(request)
            return

    def _note_error(self, outcome: Outcome) -> None:
        self.counters.last_error = _said(outcome)
        self.counters.last_error_time = time.time()

    def _log_refusal(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY and self._last_log:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        logger.warning("trifle-otel: forwarding to %s: the backend %s%s", self.target.name, text, more)
        self._last_log = now
        self._unlogged = 0

    # -- stopping ----------------------------------------------------------------------------

    def drain(self, deadline: float) -> bool:
        """Wait until the queue is empty (True), the target is failing, or ``deadline``
        (monotonic) passes."""
        while time.monotonic() < deadline:
            if self.queue.pending()[0] == 0:
                return True
            if self.failing:
                return False
            time.sleep(0.02)
        return self.queue.pending()[0] == 0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending (a request in progress is cut short and kept); the queue stays on
        disk for the next start."""
        self._stop.set()
        self.sender.abort()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck in a send that would not abort
                logger.warning("trifle-otel: forwarding to %s did not stop within %.0f s", self.target.name, timeout)
        self.sender.close()
        self.queue.close()

    # -- reporting ---------------------------------------------------------------------------

    def metrics(self) -> dict:
        requests, spans = self.queue.pending()
        dropped = {reason: list(counts) for reason, counts in self.counters.dropped.items()}
        for reason, counts in self.queue.dropped.items():
            if counts[0] or counts[1]:
                total = dropped.setdefault(reason, [0, 0])
                total[0] += counts[0]
                total[1] += counts[1]
        c = self.counters
        return {
            "target": self.target.name,
            "requests_sent": c.requests_sent,
            "spans_sent": c.spans_sent,
            "retries": c.retries,
            "rejected_spans": c.rejected_spans,
            "dropped": dropped,
            "queue_bytes": self.queue.bytes,
            "queue_max_bytes": self.queue.max_bytes,
            "queued_requests": requests,
            "queued_spans": spans,
            "failing": self.failing,
            "last_error": c.last_error,
            "last_error_time": c.last_error_time,
        }


def _said(outcome: Outcome) -> str:
    return f"{outcome.reason}: {outcome.message}" if outcome.message else outcome.reason
