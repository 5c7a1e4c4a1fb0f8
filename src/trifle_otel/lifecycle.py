"""Draining on process exit: ``atexit`` and SIGTERM (the signal a deploy or an orchestrator
sends), so buffered traces and stats are written before the process goes."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref

logger = logging.getLogger("trifle_otel")

_drains: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_methods: dict[int, tuple[str, str | None]] = {}  # id -> (at exit, on SIGTERM)
_installed = False
_lock = threading.RLock()  # re-entrant: a signal may arrive while the main thread holds it


def register(owner: object, method: str = "shutdown", flush: str | None = None) -> None:
    """Call ``owner.<method>()`` at exit, and ``owner.<flush>()`` on SIGTERM (owner held weakly).

    SIGTERM flushes rather than stops: an application may shut down warmly after it (a
    Celery worker finishing its jobs), and those jobs' spans must still be written; the
    stop comes at exit.
    """
    global _installed
    with _lock:
        _drains[id(owner)] = owner
        _methods[id(owner)] = (method, flush)
        if not _installed:
            _installed = True
            atexit.register(drain_all)
            _install_sigterm()


def unregister(owner: object) -> None:
    with _lock:
        _drains.pop(id(owner), None)
        _methods.pop(id(owner), None)


def _exporter_of(processor: object) -> object:
    """The exporter an SDK span processor feeds (Simple-, or BatchSpanProcessor before and
    after the SDK moved it into a shared batch processor), else None."""
    exporter = getattr(processor, "span_exporter", None)
    if exporter is None:
        exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
    return exporter


def _flush_tracer_provider(provider: object) -> None:
    # The processors that feed one of our exporters first, each with its own time: the
    # provider flushes its processors in turn under one deadline, and an exporter listed
    # before ours (OTEL_TRACES_EXPORTER=otlp,trifle) with its backend down or hanging uses
    # it all up, leaving our exporter's last spans in its batch processor until after our
    # pipelines have stopped.
    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    for processor in tuple(processors):
        pipeline = getattr(_exporter_of(processor), "pipeline", None)
        if pipeline is not None and _drains.get(id(pipeline)) is pipeline:
            processor.force_flush(5000)
    # Then the application's other exporters too: a SIGTERM that ends the process skips exit hooks.
    flush = getattr(provider, "force_flush", None)
    if callable(flush):
        flush(5000)


def drain_all(on_signal: bool = False) -> None:
    # Spans still in the application's own batch processors reach us (exporter path) first.
    try:
        from opentelemetry import trace as otel_trace

        _flush_tracer_provider(otel_trace.get_tracer_provider())
    except Exception:
        logger.debug("trifle-otel: flushing the tracer provider failed", exc_info=True)
    with _lock:
        owners = [(o, _methods.get(k, ("shutdown", None))) for k, o in list(_drains.items())]
    for owner, (method, flush) in owners:
        name = flush if on_signal else method
        if not name:
            continue
        try:
            getattr(owner, name)()
        except Exception:
            logger.exception("trifle-otel: draining %r failed", owner)


def _install_sigterm() -> None:
    # Only from the main thread, and only chaining: an application's own handler still runs.
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return
    if previous is signal.SIG_IGN:
        return

    def on_sigterm(signum: int, frame) -> None:
        if callable(previous):
            # The application handles SIGTERM (often a warm shutdown that finishes the jobs
            # at hand): write what has ended, keep tracing; the stop comes at exit.
            drain_all(on_signal=True)
            previous(signum, frame)
        else:  # the process ends now, as it would without us: stop and spill first
            drain_all()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        pass

