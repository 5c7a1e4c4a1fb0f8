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
_methods: dict[int, str] = {}
_installed = False
_lock = threading.Lock()


def register(owner: object, method: str = "shutdown") -> None:
    """Call ``owner.<method>()`` at exit and on SIGTERM (owner held weakly)."""
    global _installed
    with _lock:
        _drains[id(owner)] = owner
        _methods[id(owner)] = method
        if not _installed:
            _installed = True
            atexit.register(drain_all)
            _install_sigterm()


def unregister(owner: object) -> None:
    with _lock:
        _drains.pop(id(owner), None)
        _methods.pop(id(owner), None)


def drain_all() -> None:
    # Spans still in the application's own batch processors reach us (exporter path) first.
    try:
        from opentelemetry import trace as otel_trace

        provider = otel_trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush(5000)
    except Exception:
        logger.debug("trifle-otel: flushing the tracer provider failed", exc_info=True)
    with _lock:
        owners = [(o, _methods.get(k, "shutdown")) for k, o in list(_drains.items())]
    for owner, method in owners:
        try:
            getattr(owner, method)()
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
        drain_all()
        if callable(previous):
            previous(signum, frame)
        else:  # default action: terminate, as without us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        pass

