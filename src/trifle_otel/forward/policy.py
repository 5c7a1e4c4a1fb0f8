"""What to do with a backend's answer: done, try again (and when), or drop.

The rules are the OTLP specification's (opentelemetry-proto ``docs/specification.md``):

- HTTP: only 429, 502, 503 and 504 are retryable, after ``Retry-After`` when the answer
  has it (seconds, or an HTTP date); any other 4xx or 5xx is permanent: the request is
  dropped, counted and logged with the backend's message, never sent again.  A 200 whose
  body reports ``partial_success`` is delivered, with the rejected spans counted.
- gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are
  retryable; RESOURCE_EXHAUSTED only when the status carries a ``RetryInfo`` (the server
  says when there will be room), else it is permanent like every other code.
- No answer (connection refused or reset, a timeout, a TLS or DNS failure): retry.

Without a delay from the backend (or with a zero one), attempts back off exponentially from
``initial_interval`` to ``max_interval`` with ±50 % jitter, so a fleet of sidecars does not
retry in step.  A backend's own delay is honoured as given, up to ``MAX_SERVER_DELAY``.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

__all__ = ["Outcome", "http_outcome", "grpc_outcome", "failure_outcome", "backoff", "retry_after_seconds"]

RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
RETRYABLE_GRPC = frozenset(("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"))
MAX_SERVER_DELAY = 300.0  # a Retry-After further out than this is taken as this
MAX_MESSAGE = 300  # characters of a backend's message kept for logs and metrics


@dataclass(frozen=True)
class Outcome:
    """``delivered``, ``retry`` (after ``delay`` seconds, or the backoff when None) or
    ``drop``; ``reason`` names it for metrics (``http_429``, ``grpc_UNAVAILABLE``,
    ``connection``); ``message`` is what the backend said."""

    action: str
    reason: str = ""
    message: str = ""
    delay: float | None = None
    rejected_spans: int = 0  # delivered with partial_success: spans the backend refused

    @property
    def delivered(self) -> bool:
        return self.action == "delivered"


def http_outcome(status: int, retry_after: str | None = None, message: str = "", rejected_spans: int = 0,
                 now: float | None = None) -> Outcome:
    if 200 <= status < 300:
        return Outcome("delivered", message=_short(message), rejected_spans=rejected_spans)
    reason = f"http_{status}"
    if status in RETRYABLE_HTTP:
        return Outcome("retry", reason, _short(message), retry_after_seconds(retry_after, now))
    return Outcome("drop", reason, _short(message))


def grpc_outcome(code_name: str, message: str = "", retry_delay: float | None = None, rejected_spans: int = 0) -> Outcome:
    if code_name == "OK":
        return Outcome("delivered", message=_short(message), rejected_spans=rejected_spans)
    reason = f"grpc_{code_name}"
    delay = None if retry_delay is None else min(max(retry_delay, 0.0), MAX_SERVER_DELAY)
    if code_name in RETRYABLE_GRPC or (code_name == "RESOURCE_EXHAUSTED" and retry_delay is not None):
        return Outcome("retry", reason, _short(message), delay)
    return Outcome("drop", reason, _short(message))


def failure_outcome(reason: str, message: str) -> Outcome:
    """No answer from the backend: always worth another attempt."""
    return Outcome("retry", reason, _short(message))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now: ``"2"`` or an HTTP date; None when
    absent or unreadable (then the backoff decides)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_SERVER_DELAY)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_SERVER_DELAY)


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (1 for the first retry): ``initial``
    doubling up to ``maximum``, then ±50 % jitter (never past ``maximum``)."""
    base = min(maximum, initial * (2 ** min(max(attempt - 1, 0), 30)))
    jitter = (rng or random).uniform(0.5, 1.5)
    return min(maximum, base * jitter)


def _short(message: str) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
