"""Writing stage in a process of its own (the sidecar): the trace stores on a second core.

In ``trifle-otel serve`` every span goes through one interpreter lock: receiving, decoding,
assembly, translation, rules, and the store writes, which were about a third of the
worker's time.  :class:`ProcessSink` stands where the worker's :class:`TraceSink` stood,
but hands each batch of documents to a child process (this module's :func:`main`, run by the
same Python) that holds the real sink and writes it there.  The
worker sends a batch and goes on translating the next while the child writes
(:meth:`ProcessSink.begin`); one batch is in flight at a time, so the order of writes is
the order of batches, and a checkpoint waits for the batch in flight like any write.

Documents cross the pipe as their record in JSON (the encoding the index stores anyway)
and their encoded parts and artifacts as bytes: a few microseconds an execution, where
pickling the records' dicts and datetimes cost ~15.  The child answers each request with
the positions of documents whose data it could not write, or the store's error message;
the worker's retry, backoff and refusals work on those exactly as for a sink in-process.

The child ignores SIGINT and SIGTERM and stops when its input closes: at shutdown the
parent writes what is left and then closes it; if the parent is killed, the pipe closes and
the child finishes the request it is on (writes are idempotent: a replay after a restart
writes the same records again) and exits.  If the child dies, the write in flight fails
like a store call and the next one starts a new child.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
from datetime import datetime
from typing import Any, Sequence

from ..config import Config
from ..errors import StoreError
from ..jsonutil import dumps, loads
from ..sinks import TraceSink
from ..stores import open_data, open_index
from ..stores.base import TIME_FIELDS, TraceIndex
from ..translate import Document

logger = logging.getLogger("trifle_otel")

PIPE_BYTES = 1 << 20  # the pipe's buffer, when the system allows: a batch crosses in few system calls
STOP_TIMEOUT = 30.0


def open_trace_sink(config: Config) -> TraceSink:
    """The configured trace stores (index and data) as one sink."""
    data = open_data(config.resolved_data_url(), config)
    index = open_index(config.resolved_index_url())
    return TraceSink(index, data, compressed=config.gzip)


# -- the pipe: length-prefixed pickles of plain data (tuples, bytes, strings, numbers) --------


def _send(fd: int, message: Any) -> None:
    body = pickle.dumps(message, protocol=5)
    view = memoryview(len(body).to_bytes(8, "little") + body)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, PIPE_BYTES))
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int) -> Any:
    return pickle.loads(_read_exact(fd, int.from_bytes(_read_exact(fd, 8), "little")))


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ (Linux); elsewhere the default buffer
    except (OSError, ValueError):
        pass


def encode_documents(documents: Sequence[Document]) -> list[tuple[bytes, tuple[bytes, ...], tuple[tuple[str, bytes], ...]]]:
    """Documents as plain data for the pipe: the record's JSON, the parts, the artifacts."""
    return [(dumps(d.record), tuple(d.bodies or ()), tuple(d.artifacts)) for d in documents]


def decode_documents(encoded: list[tuple[bytes, tuple[bytes, ...], tuple[tuple[str, bytes], ...]]]) -> list[Document]:
    documents = []
    for record_json, bodies, artifacts in encoded:
        record = loads(record_json)
        for name in TIME_FIELDS:
            value = record.get(name)
            if isinstance(value, str):
                record[name] = datetime.fromisoformat(value)
        documents.append(Document(record, [], [], list(artifacts), bodies=list(bodies)))
    return documents


# -- the parent's side ------------------------------------------------------------------------


class _Request:
    """A request sent to the child; its answer is read once, by whoever needs it first."""

    __slots__ = ("_owner", "answered", "value", "error")

    def __init__(self, owner: "ProcessSink") -> None:
        self._owner = owner
        self.answered = False
        self.value: Any = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        if not self.answered and self._owner._readable():
            self._take()
        return self.answered

    def wait(self) -> Any:
        if not self.answered:
            self._take()
        if self.error is not None:
            raise self.error
        return self.value

    def _take(self) -> None:
        try:
            self.value = self._owner._answer()
        except Exception as exc:
            self.error = exc
        self.answered = True


class PendingWrite:
    """A batch handed to the child: :meth:`result` waits for its answer (the documents whose
    data could not be written) or raises the store's error."""

    __slots__ = ("_request", "documents")

    def __init__(self, request: _Request, documents: Sequence[Document]) -> None:
        self._request = request
        self.documents = documents

    def done(self) -> bool:
        """Whether the answer is in (asking does not wait)."""
        return self._request.done()

    def result(self) -> list[Document]:
        return [self.documents[i] for i in self._request.wait()]


class ProcessSink:
    """A :class:`TraceSink` whose writes happen in a child process (see the module's doc).

    Reads (``index``) are served in this process, from the same stores."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._index: TraceIndex | None = None
        self._process: subprocess.Popen | None = None
        self._to = -1
        self._from = -1
        self._last: _Request | None = None  # the latest request (its answer may not be read yet)
        self._opening: _Request | None = None  # the child's first request: open the stores
        self._start()

    # -- the TraceSink interface --------------------------------------------------------------

    def write(self, documents: Sequence[Document]) -> list[Document]:
        return self.begin(documents).result()

    def begin(self, documents: Sequence[Document]) -> PendingWrite:
        """Send a batch to the child and return at once: the worker translates the next one
        while the child writes this one."""
        payload = encode_documents(documents)
        return PendingWrite(self._request(("write", payload)), documents)

    def discard(self, documents: Sequence[Document]) -> None:
        self._request(("discard", encode_documents(documents))).wait()

    def purge_expired(self, now: datetime, limit: int = 1000) -> int:
        return int(self._request(("purge", now, limit)).wait())

    @property
    def index(self) -> TraceIndex:
        if self._index is None:
            self._index = open_index(self.config.resolved_index_url())
        return self._index

    def close(self) -> None:
        """Let the child finish what it was sent, stop it, close the reading side."""
        self._stop()
        if self._index is not None:
            try:
                self._index.close()
            except Exception:
                pass
            self._index = None

    # -- the child ----------------------------------------------------------------------------

    def _start(self) -> None:
        # The same interpreter and environment; where this package is not on its default
        # path (a checkout added at run time), it is found where the parent found it.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.append({package_root!r}); "
                "from trifle_otel.pipeline.store_process import main; sys.exit(main())")
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True,
                # Its own session: a Ctrl-C in the terminal reaches the parent only,
                # which writes what is left through the child before it stops it.
                start_new_session=True,
            )
        except OSError as exc:
            raise StoreError(f"cannot start the store writer process ({sys.executable}): {exc}") from None
        assert process.stdin is not None and process.stdout is not None
        self._process, self._to, self._from = process, process.stdin.fileno(), process.stdout.fileno()
        _widen(self._to)
        request = _Request(self)
        try:
            _send(self._to, ("open", self.config))
        except OSError as exc:
            self._died(f"cannot start the store writer process: {exc}")
        self._last = self._opening = request

    def _request(self, message: Any) -> _Request:
        """Send one request once the one before it is answered (that answer is kept for
        whoever waits on it): requests and answers never interleave on the pipe."""
        last, opening = self._last, self._opening
        if last is not None and not last.answered:
            last._take()  # (it may find the child gone: then it is stopped)
        if opening is not None and last is opening:
            self._opening = None
            if opening.error is not None:  # the stores did not open (the child has exited)
                raise opening.error
        if self._process is None:
            self._start()
            return self._request(message)  # (waits for the new child to open the stores)
        request = _Request(self)
        try:
            _send(self._to, message)
        except OSError as exc:
            self._died(f"cannot send to the store writer process: {exc}")
        self._last = request
        return request

    def _readable(self) -> bool:
        if self._process is None:
            return True  # (the answer is an error, at once)
        poller = select.poll()  # (not select(): serve may hold more than 1,024 descriptors)
        poller.register(self._from, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))

    def _answer(self) -> Any:
        if self._process is None:
            raise StoreError("the store writer process is not running; it is started again for the next write")
        try:
            reply = _receive(self._from)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            self._died(f"the store writer process stopped ({exc})")
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "fatal":  # (the stores did not open: the child exits)
            self._stop()
        raise StoreError(reply[1])

    def _died(self, why: str) -> None:
        code = self._process.poll() if self._process is not None else None
        self._stop()
        exited = "" if code is None else f" (it exited with code {code})"
        raise StoreError(f"{why}{exited}; it is started again for the next write")

    def _stop(self) -> None:
        process, self._process = self._process, None
        self._last = self._opening = None
        self._to = self._from = -1
        if process is None:
            return
        try:
            process.stdin.close()  # end of input: the child writes what it was sent, closes the stores, exits
        except OSError:
            pass
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("trifle-otel: the store writer process did not stop in %.0f s; killing it", STOP_TIMEOUT)
            process.kill()
            process.wait()
        process.stdout.close()


# -- the child's side -------------------------------------------------------------------------


def _serve(inp: int, out: int) -> int:
    """Answer requests until the input closes: open, write, discard, purge."""
    try:
        _, config = _receive(inp)  # ("open", the configuration)
    except EOFError:
        return 0
    try:
        sink = open_trace_sink(config)
    except Exception as exc:
        _send(out, ("fatal", _message(exc, "cannot open the trace stores")))
        return 1
    try:
        _send(out, ("ok", None))
        while True:
            try:
                request = _receive(inp)
            except EOFError:
                return 0
            try:
                answer = ("ok", _handle(sink, request))
            except Exception as exc:
                answer = ("error", _message(exc, f"the store writer process failed on {request[0]!r}"))
                # A failed store call leaves reference cycles (the client library's exceptions
                # and retries): free them now, or a long outage grows memory with every retry.
                exc.__traceback__ = None
                del exc
                gc.collect(1)
            _send(out, answer)
    except OSError:  # the parent is gone (its end of the pipe closed)
        return 0
    finally:
        sink.close()


def _handle(sink: TraceSink, request: tuple) -> Any:
    kind = request[0]
    if kind == "write":
        documents = decode_documents(request[1])
        failed = {id(d) for d in sink.write(documents)}
        return [i for i, d in enumerate(documents) if id(d) in failed]
    if kind == "discard":
        sink.discard(decode_documents(request[1]))
        return None
    if kind == "purge":
        return sink.purge_expired(request[1], request[2])
    raise ValueError(f"unknown request {kind!r}")


def _message(exc: BaseException, what: str) -> str:
    return str(exc) if isinstance(exc, StoreError) else f"{what}: {exc!r}"


def main() -> int:
    # Stopped by its input closing, never by a signal meant for the parent (a terminal's
    # Ctrl-C, a service manager's SIGTERM to the group): the parent writes what is left first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # (stray prints go to the log, not into the pipe)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    gc.freeze()
    return _serve(inp, out)

