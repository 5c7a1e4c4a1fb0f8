"""One target's sender thread: its queue, in order, to its backend, until it answers.

Each target has its own queue and threads, so a slow or dead backend holds back only its
own deliveries: ingest appends to the queue and never waits for a backend.  A request is
sent again and again (after the backend's ``Retry-After`` / ``RetryInfo``, else an
exponential backoff) until it is delivered or refused for good; with one request in
flight (``max_in_flight: 1``, the default) the requests behind it wait their turn, so a
backend receives them in the order they were received.

Logs are for people at 3 a.m.: one warning when a target starts failing and one line
when it delivers again, not one per retry; refused requests are logged with the
backend's message at most once a minute per target, with how many more there were.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import OTLPDecodeError
from .policy import Outcome, backoff
from .queue import ForwardQueue, QueuedRequest
from .target import ForwardTarget

__all__ = ["Forwarder", "ForwardCounters", "Sender"]

logger = logging.getLogger("trifle_otel")

LOG_EVERY = 60.0  # seconds between log lines about refused requests, per target
CURSOR_EVERY = 0.2  # seconds between writes of a queue's cursor while requests are delivered


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


class _InFlight:
    __slots__ = ("request", "state")

    def __init__(self, request: QueuedRequest) -> None:
        self.request = request
        self.state = ""  # "delivered", "dropped" or "gone" once settled


class Forwarder:
    """``senders``: one per request in flight (``max_in_flight``), each used by its own
    thread.  With one, the backend receives requests strictly in order; with more, they
    are sent in order and may arrive out of order (a retry overtaken by later requests);
    the queue moves past a request only once every request before it is settled."""

    def __init__(self, target: ForwardTarget, queue: ForwardQueue, senders: list[Sender], *,
                 rng: random.Random | None = None) -> None:
        if not senders:
            raise ValueError("a forwarder needs at least one sender")
        self.target = target
        self.queue = queue
        self.senders = senders
        self.counters = ForwardCounters()
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # counters, the in-flight window, failing state, logs
        self._claim_lock = threading.Lock()  # one thread reads the queue ahead at a time
        self._claimed: QueuedRequest | None = None  # the last request taken to send
        self._window: deque[_InFlight] = deque()
        self._failing_since: float | None = None  # monotonic time of the first failure in a row
        self._failures = 0  # failed attempts in a row (for the backoff)
        self._last_log = 0.0
        self._unlogged = 0
        self._last_cursor = 0.0

    def start(self) -> "Forwarder":
        for n, sender in enumerate(self.senders):
            thread = threading.Thread(target=self._run, args=(sender,), daemon=True,
                                      name=f"trifle-otel-forward-{self.target.name}-{n}")
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self, sender: Sender) -> None:
        while not self._stop.is_set():
            try:
                entry = self._claim()
                if entry is None:
                    self._flush_cursor(force=True)
                    continue
                self._settle(entry, self._deliver(sender, entry.request))
                self._flush_cursor()
            except Exception:  # the thread goes on: a target must not stop forwarding for good
                logger.exception("trifle-otel: forwarding to %s: its queue failed", self.target.name)
                self._stop.wait(1.0)

    def _claim(self) -> _InFlight | None:
        with self._claim_lock:
            request = self.queue.next_after(self._claimed, timeout=0.5)
            if request is None or self._stop.is_set():
                return None
            self._claimed = request
            entry = _InFlight(request)
            with self._lock:
                self._window.append(entry)
            return entry

    def _deliver(self, sender: Sender, request: QueuedRequest) -> str:
        """Send until the backend takes or refuses the request; returns how it settled."""
        while True:
            try:
                outcome = sender.send(request.payload)
            except OTLPDecodeError as exc:
                outcome = Outcome("drop", "unreadable", f"the queued request cannot be read: {exc}")
            except Exception as exc:  # a bug must not stop the queue: count it, log it, go on
                self._log_refusal(f"failed unexpectedly ({type(exc).__name__}: {exc})", exc_info=True)
                outcome = Outcome("drop", "internal_error", str(exc) or type(exc).__name__)
            if self._stop.is_set() and not outcome.delivered:
                return ""  # cut short by stop(): sent again after the next start
            if outcome.action == "retry":
                delay = self._failed(outcome)
                if self._stop.wait(delay):
                    return ""
                if not self.queue.holds(request):
                    return "gone"  # dropped at the queue's bound meanwhile (counted then)
                continue
            self._recovered(outcome)
            if outcome.delivered:
                with self._lock:
                    self.counters.requests_sent += 1
                    self.counters.spans_sent += request.spans
                    self.counters.rejected_spans += outcome.rejected_spans
                if outcome.rejected_spans:
                    self._log_refusal(f"refused {outcome.rejected_spans} span(s) of a request: {outcome.message or 'no message'}")
                return "delivered"
            with self._lock:
                self.counters.drop(outcome.reason, 1, request.spans)
                self._note_error(outcome)
            self._log_refusal(f"refused a request of {request.spans} span(s) for good ({_said(outcome)}); it is dropped")
            return "dropped"

    def _failed(self, outcome: Outcome) -> float:
        with self._lock:
            self._failures += 1
            self.counters.retries += 1
            self._note_error(outcome)
            first = self._failing_since is None
            if first:
                self._failing_since = time.monotonic()
            failures = self._failures
        if first:
            logger.warning("trifle-otel: forwarding to %s is failing (%s); retrying, queued requests wait on disk",
                           self.target.name, _said(outcome))
        if outcome.delay:  # the backend said when (a zero delay gets the backoff)
            return outcome.delay
        return backoff(failures, self.target.initial_interval, self.target.max_interval, self._rng)

    def _recovered(self, outcome: Outcome) -> None:
        """An answer that settles the request: the run of failures, if any, is over."""
        with self._lock:
            since = self._failing_since
            self._failing_since = None
            self._failures = 0
        if since is not None:
            if outcome.delivered:
                logger.warning("trifle-otel: forwarding to %s delivers again after %.1f s", self.target.name,
                               time.monotonic() - since)
            else:
                logger.warning("trifle-otel: forwarding to %s answers again after %.1f s (and refused a request)",
                               self.target.name, time.monotonic() - since)

    def _settle(self, entry: _InFlight, state: str) -> None:
        """Mark a request settled, and move the queue past every settled request at the
        front of the window, in order."""
        if not state:
            return  # stopping: it stays queued
        with self._lock:
            entry.state = state
            while self._window and self._window[0].state:
                first = self._window.popleft()
                self.queue.done(first.request, delivered=first.state == "delivered")

    def _flush_cursor(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_cursor >= CURSOR_EVERY:
            self._last_cursor = now
            self.queue.flush_cursor()

    def _note_error(self, outcome: Outcome) -> None:
        self.counters.last_error = _said(outcome)
        self.counters.last_error_time = time.time()

    def not_queued(self, spans: int, error: BaseException) -> None:
        """A request that could not be put in the queue (a full disk): counted as dropped."""
        with self._lock:
            self.counters.drop("queue_write_failed", 1, spans)
            self._note_error(Outcome("drop", "queue_write_failed", str(error)))

    def _log_refusal(self, text: str, exc_info: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last_log and now - self._last_log < LOG_EVERY:
                self._unlogged += 1
                return
            more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
            self._last_log = now
            self._unlogged = 0
        logger.warning("trifle-otel: forwarding to %s: the backend %s%s", self.target.name, text, more, exc_info=exc_info)

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

    def signal_stop(self) -> None:
        """Stop sending: requests in progress are cut short and stay queued."""
        self._stop.set()
        for sender in self.senders:
            sender.abort()

    def stop(self, deadline: float | None = None) -> None:
        """Stop, wait for the threads until ``deadline`` (monotonic), close; the queue stays
        on disk for the next start."""
        self.signal_stop()
        deadline = time.monotonic() + 5.0 if deadline is None else deadline
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        stuck = sum(thread.is_alive() for thread in self._threads)
        if stuck:  # in a send that would not abort (a connect): the thread is a daemon
            logger.warning("trifle-otel: forwarding to %s: %d request(s) still in progress at stop are sent again "
                           "after the next start", self.target.name, stuck)
        for sender in self.senders:
            sender.close()
        self.queue.close()

    # -- reporting ---------------------------------------------------------------------------

    def metrics(self) -> dict:
        requests, spans = self.queue.pending()
        with self._lock:
            dropped = {reason: list(counts) for reason, counts in self.counters.dropped.items()}
            c = self.counters
            values = {
                "target": self.target.name,
                "requests_sent": c.requests_sent,
                "spans_sent": c.spans_sent,
                "retries": c.retries,
                "rejected_spans": c.rejected_spans,
                "failing": self.failing,
                "last_error": c.last_error,
                "last_error_time": c.last_error_time,
                "in_flight": sum(1 for e in self._window if not e.state),
            }
        for reason, counts in self.queue.dropped.items():
            if counts[0] or counts[1]:
                total = dropped.setdefault(reason, [0, 0])
                total[0] += counts[0]
                total[1] += counts[1]
        values.update(dropped=dropped, queue_bytes=self.queue.bytes, queue_max_bytes=self.queue.max_bytes,
                      queued_requests=requests, queued_spans=spans)
        return values


def _said(outcome: Outcome) -> str:
    return f"{outcome.reason}: {outcome.message}" if outcome.message else outcome.reason
