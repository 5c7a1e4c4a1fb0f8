"""The small protocol between the OTLP receivers and whatever takes their spans.

The receivers (``otlp_http``, ``otlp_grpc``) only speak OTLP: they authenticate, bound and
decode a request, then hand a :class:`ReceivedBatch` to an :class:`Intake` and turn its
:class:`Admission` into the protocol's answer (200 with or without ``partial_success``,
429/503 with ``Retry-After``, UNAVAILABLE with ``RetryInfo``).  What happens to the spans —
the write-ahead log, assembly, the stores, forwarding — is the intake's business, so the
receivers are tested on their own with a recording intake, and the pipeline can change
behind them.

A batch carries the request body exactly as it was received (still compressed), with its
content type and encoding: the intake appends that to the write-ahead log (a small header
and the bytes, :meth:`ReceivedBatch.to_record`) and can forward the same bytes to another
OTLP endpoint without encoding them again.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

import orjson

from ..errors import OTLPDecodeError
from ..model import Span
from .otlp_decode import ENCODINGS, JSON, PROTOBUF, decode_request, inflate

__all__ = ["ReceivedBatch", "read_record", "Admission", "Intake", "INTAKE_METRICS", "bearer_ok", "early_refusal", "media_type", "content_encoding"]

# What ``Intake.metrics()`` may report, with the Prometheus type and help of each; other
# names are exported as gauges.
INTAKE_METRICS: dict[str, tuple[str, str]] = {
    "executions_written": ("counter", "Executions written to the stores"),
    "pending_spans": ("gauge", "Spans received and waiting for their execution to finish"),
    "late_spans": ("counter", "Spans that arrived after their execution was written"),
    "wal_bytes": ("gauge", "Bytes in the write-ahead log"),
    "wal_max_bytes": ("gauge", "The write-ahead log's byte bound"),
    "wal_segments": ("gauge", "Segments in the write-ahead log"),
    "store_errors": ("counter", "Failed writes to the stores"),
    # the sidecar's intake (trifle-otel serve)
    "queued_spans": ("gauge", "Spans taken and waiting for the pipeline's worker"),
    "retry_executions": ("gauge", "Finished executions waiting to be written again (the stores refused)"),
    "retained_spans": ("gauge", "Spans of written executions kept in memory for late spans"),
    "running_records": ("counter", "Running records written (jobs whose root span has not arrived)"),
    "duplicate_spans": ("counter", "Spans received twice (a retried export), dropped"),
    "evicted_spans": ("counter", "Spans of running jobs let go from memory at the max_pending_spans bound"),
    "executions_finished_early": ("counter", "Executions written before their grace was over, at the max_pending_spans bound"),
    "late_dropped_spans": ("counter", "Late spans of executions no longer in memory, dropped"),
    "truncated_spans": ("counter", "Spans past the per-execution limit, left out"),
    "checkpoints": ("counter", "Checkpoints done (stats written, the write-ahead log trimmed)"),
    "checkpoint_failures": ("counter", "Checkpoints abandoned because a store refused"),
    "stats_tracks": ("counter", "Stats tracks made by rules and the default execution stat"),
    "processor_errors": ("counter", "Spans or executions the pipeline failed on (see the log)"),
    "requests_refused_wal_full": ("counter", "Requests refused: the write-ahead log was full"),
    "requests_refused_overloaded": ("counter", "Requests refused: the queue to the worker was full"),
    "requests_refused_stores_unavailable": ("counter", "Requests refused: the stores did not take writes"),
    "requests_refused_shutting_down": ("counter", "Requests refused while shutting down"),
    "requests_refused_wal_failed": ("counter", "Requests refused: the write-ahead log could not be written"),
}

_RECORD_MAGIC = b"OTLP1 "


@dataclass(frozen=True, slots=True)
class ReceivedBatch:
    """One export request, decoded, with the bytes it came as."""

    spans: list[Span]
    body: bytes  # as received: compressed when content_encoding is set
    content_type: str = PROTOBUF  # PROTOBUF or JSON (gRPC requests are PROTOBUF)
    content_encoding: str = ""  # "", "gzip" or "deflate"
    transport: str = "http"  # "http" or "grpc"
    rejected_spans: int = 0  # left out while decoding (empty or zero ids)
    message: str = ""  # why they were left out, or a decoding warning (repaired UTF-8)

    def to_record(self) -> bytes:
        """The request as a write-ahead log record: a one-line header, then the body."""
        header = orjson.dumps({"type": self.content_type, "encoding": self.content_encoding, "transport": self.transport})
        return _RECORD_MAGIC + header + b"\n" + self.body

    @classmethod
    def from_record(cls, record: bytes, max_request_bytes: int = 1 << 62) -> "ReceivedBatch":
        """Decode a record written by :meth:`to_record` again (replay after a restart)."""
        header, body = _split_record(record)
        content_type, encoding = header["type"], header["encoding"]
        decoded = decode_request(inflate(body, encoding, max_request_bytes), content_type)
        return cls(decoded.spans, body, content_type, encoding, header["transport"], decoded.rejected_spans, decoded.message)


def read_record(record: bytes) -> tuple[str, str, bytes]:
    """A record's (content type, content encoding, body as received), without decoding
    the body: what forwarding needs to send the request on."""
    header, body = _split_record(record)
    return header["type"], header["encoding"], body


def _split_record(record: bytes) -> tuple[dict, bytes]:
    if not record.startswith(_RECORD_MAGIC) or b"\n" not in record[:512]:
        raise OTLPDecodeError("not an OTLP request record of the write-ahead log")
    header_end = record.index(b"\n")
    try:
        header = orjson.loads(record[len(_RECORD_MAGIC) : header_end])
    except orjson.JSONDecodeError:
        raise OTLPDecodeError("an OTLP request record's header is damaged") from None
    return header, record[header_end + 1 :]


@dataclass(frozen=True, slots=True)
class Admission:
    """What the intake did with a batch.

    Accepted (``accepted=True``): the spans are safe (durable) and the client gets 200 /
    OK; ``rejected_spans`` and ``error_message`` turn into OTLP ``partial_success`` (spans
    refused for good: the client must not retry them).  Refused: nothing was kept, and the
    client is told to retry after ``retry_after`` seconds with HTTP ``status`` 429 (too many
    requests) or 503 (unavailable; gRPC UNAVAILABLE either way); ``reason`` is a short
    word for metrics (``wal_full``, ``overloaded``, ``shutting_down`` ...), ``message`` says
    what is going on for the client's logs.
    """

    accepted: bool
    rejected_spans: int = 0
    error_message: str = ""
    reason: str = ""
    message: str = ""
    retry_after: float = 1.0
    status: int = 503

    @classmethod
    def accept(cls, rejected_spans: int = 0, error_message: str = "") -> "Admission":
        return cls(True, rejected_spans, error_message)

    @classmethod
    def refuse(cls, reason: str, message: str, *, retry_after: float = 1.0, status: int = 503) -> "Admission":
        if status not in (429, 503):
            raise ValueError("a refusal is answered 429 or 503: the statuses OTLP clients retry")
        return cls(False, reason=reason, message=message, retry_after=max(retry_after, 0.0), status=status)


@runtime_checkable
class Intake(Protocol):
    def accept(self, batch: ReceivedBatch) -> Admission:
        """Take a batch (called from receiver threads, concurrently).  Return only once the
        spans are safe — appended to the write-ahead log — or refuse.  A ``WALFull`` raised
        here is answered as a refusal (503 / UNAVAILABLE, retry after 5 s); any other
        exception as an internal error (500 / INTERNAL), logged."""
        ...

    def health(self) -> str | None:
        """``None`` while batches are accepted, else why they are refused (GET /health)."""
        ...

    # Optional: ``admit(size: int) -> Admission | None``, asked before a request is read and
    # decoded (``size``: its body as received, 0 when not known); a refusal from it is
    # answered at once (see ``early_refusal``).  It must not block: on HTTP it runs on the
    # event loop.

    def metrics(self) -> Mapping[str, float]:
        """Current values for /metrics, by the names in ``INTAKE_METRICS``."""
        ...


def early_refusal(intake: Intake, size: int) -> Admission | None:
    """A refusal before the request is read and decoded, when the intake can already tell
    (its optional ``admit(size)``: ``size`` is the body's size as received, 0 when not
    known): under overload, refused requests then cost no decoding."""
    admit = getattr(intake, "admit", None)
    if admit is None:
        return None
    admission = admit(size)
    return admission if admission is not None and not admission.accepted else None


def media_type(header: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return (header or "").split(";", 1)[0].strip().lower()


def content_encoding(header: str | None) -> str | None:
    """The accepted encoding's name, or None when it is not one of ``ENCODINGS``."""
    return ENCODINGS.get((header or "").strip().lower())


SUPPORTED_TYPES = (PROTOBUF, JSON)


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` value carries the token (``Bearer <token>``; any case
    for the scheme), compared in constant time.  True when no token is configured."""
    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
